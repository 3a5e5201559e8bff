//! One cache and one rate limiter for the whole process, not one per worker: every request
//! here comes on a new TCP connection, and actix hands new connections to its workers in
//! turn (`spawn_proxy` runs two), so per-worker state would show.

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, TestApp, client, spawn_app, x_cache};

/// A POST on a connection of its own (a new client has an empty pool).
async fn on_new_connection(app: &TestApp) -> reqwest::Response {
    app.post_json_via(&client(), "/v1/chat/completions", "sk-a", CHAT_BODY)
        .await
}

#[tokio::test]
async fn a_response_stored_by_one_connection_is_a_hit_on_every_other() {
    let app = spawn_app(&[]).await;
    app.answer_posts().await;
    let miss = on_new_connection(&app).await;
    assert_eq!(x_cache(&miss), "MISS");
    // Read to the end: the answer is stored before its last byte is sent.
    assert_eq!(miss.text().await.unwrap(), CHAT_ANSWER);
    for i in 0..4 {
        let res = on_new_connection(&app).await;
        assert_eq!(x_cache(&res), "HIT", "connection {i}");
        assert_eq!(res.text().await.unwrap(), CHAT_ANSWER);
    }
    assert_eq!(app.upstream_calls().await, 1);
}

#[tokio::test]
async fn the_rate_limit_is_one_bucket_per_client_across_connections_and_workers() {
    let app = spawn_app(&[("RATE_LIMIT", "2")]).await;
    app.answer_posts().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = on_new_connection(&app).await;
        statuses.push(res.status().as_u16());
        res.bytes().await.unwrap();
    }
    // A limiter per worker would let 2 through on each of the two workers.
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    assert_eq!(app.stats(None).await["rate_limited_total"], 4);
}
