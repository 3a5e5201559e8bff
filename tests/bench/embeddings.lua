-- wrk script for the bench: one fixed embeddings POST (the upstream answers ~32 KB), one cache key.
wrk.method = "POST"
wrk.path = "/v1/embeddings"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"text-embedding-3-large","input":"The food was delicious and the waiter was friendly.","encoding_format":"float"}'
