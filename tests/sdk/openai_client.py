"""Drives the proxy with the official OpenAI Python SDK; prints what a user would see."""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["PROXY_BASE"] + "/v1", api_key="sk-sdk-test", max_retries=0)
messages = [{"role": "user", "content": "Say hello"}]

for _ in range(2):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    completion = raw.parse()
    print("chat", raw.headers.get("x-cache"), completion.choices[0].message.content)

for _ in range(2):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    )
    text = "".join(
        chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
    )
    print("stream", raw.headers.get("x-cache"), text)
