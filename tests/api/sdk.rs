//! The official OpenAI Python SDK, pointed at the proxy with `base_url`.

use std::process::Stdio;

use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::spawn_app;

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

fn sse() -> String {
    let chunk = |content: &str| {
        format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",
                   "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
        )
    };
    format!("{}{}data: [DONE]\n\n", chunk("Hel"), chunk("lo!"))
}

#[tokio::test]
async fn the_official_python_sdk_works_through_the_proxy() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(ResponseTemplate::new(200).set_body_raw(sse(), "text/event-stream"))
        .expect(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(COMPLETION, "application/json"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("PROXY_BASE", &app.address)
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("python3 not found: apt-get install python3 (make test installs the SDK)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai package is missing: python3 -m pip install openai (make test does this)"
    );
    assert!(out.status.success(), "SDK script failed:\n{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "chat MISS hello there\nchat HIT hello there\nstream MISS Hello!\nstream HIT Hello!\n"
    );
}
