//! `LOG_FORMAT=json`: the lines tracing-subscriber's `json().flatten_event(true)` writes, with
//! the same keys in the same order (`timestamp`, `level`, the event's fields, `target`), but
//! serialised by serde_json straight into a buffer.
//!
//! tracing-subscriber hands serde_json a writer that checks every piece it is given for UTF-8
//! and passes it on through a `dyn fmt::Write`: a JSON key, a quote and a colon are each a
//! call of their own. The access log's line, written on every request, cost 29,000
//! instructions that way, half as many again as the 58,000 of the rest of a cache HIT (under
//! callgrind). Here serde_json appends to a `Vec<u8>` and the line is checked once, as a
//! whole: 11,600 instructions, the escaping of its strings the largest part.

use std::cell::RefCell;
use std::fmt;
use std::time::SystemTime;

use serde::Serializer as _;
use serde::ser::SerializeMap;
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_serde::SerdeMapVisitor;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as one JSON object per line; spans are not shown (see `telemetry::init`).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        with_buffer(|buf| {
            serialize(buf, event).map_err(|_| fmt::Error)?;
            buf.push(b'\n');
            // serde_json writes UTF-8 only; checked once rather than trusted.
            writer.write_str(std::str::from_utf8(buf).map_err(|_| fmt::Error)?)
        })
    }
}

/// Runs `f` on this thread's line buffer, emptied. An event logged while the thread formats
/// one (from a field's `Debug`, under the global subscriber, which does not stop re-entry)
/// gets a buffer of its own.
fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with(|line| match line.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            f(&mut buf)
        }
        Err(_) => f(&mut Vec::new()),
    })
}

fn serialize(buf: &mut Vec<u8>, event: &Event<'_>) -> serde_json::Result<()> {
    // Events from the `log` crate carry their real target in fields; this is the metadata
    // they would have had.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut ser = serde_json::Serializer::new(buf);
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("timestamp", &Rfc3339Micros(SystemTime::now()))?;
    map.serialize_entry("level", meta.level().as_str())?;
    let mut fields = SerdeMapVisitor::new(map);
    event.record(&mut fields);
    let mut map = fields.take_serializer()?;
    map.serialize_entry("target", meta.target())?;
    map.end()
}

/// A time as tracing-subscriber's JSON lines show it: RFC 3339, UTC, in microseconds.
struct Rfc3339Micros(SystemTime);

impl serde::Serialize for Rfc3339Micros {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// What one `log` call writes, with tracing-subscriber's formatter or with ours.
    fn written(ours: bool, log: impl FnOnce()) -> String {
        let lines = Lines::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_max_level(tracing::Level::TRACE)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        if ours {
            tracing::subscriber::with_default(builder.event_format(JsonLines).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    /// The line without its timestamp, which differs between two calls, and the timestamp.
    fn split(line: &str) -> (serde_json::Map<String, serde_json::Value>, String) {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let t = v.remove("timestamp").unwrap().as_str().unwrap().to_owned();
        (v, t)
    }

    #[test]
    fn lines_match_tracing_subscribers_json_key_for_key() {
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let log = || {
            tracing::info!(
                request_id = "27b95187-1723-4570-b701-27d132fc33d0",
                client_ip = %ip,
                method = %actix_web::http::Method::POST,
                path = "/v1/chat/\"completions\"\n\u{1}",
                status = 200u16,
                cache = Some("HIT"),
                no_cache_reason = None::<&str>,
                upstream_latency_ms = 3.362,
                complete = true,
                delta = -4i64,
                "request"
            );
            tracing::warn!(error = ?std::io::Error::other("boom \"x\""), "upstream failed: {}", 7);
        };
        let theirs = written(false, log);
        let ours = written(true, log);
        assert_eq!(ours.lines().count(), 2, "{ours}");
        assert!(ours.ends_with('\n'));
        for (a, b) in ours.lines().zip(theirs.lines()) {
            // Same keys in the same order, same values.
            let keys = |l: &str| {
                let v: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(l).unwrap();
                v.keys().cloned().collect::<Vec<_>>()
            };
            assert_eq!(keys(a), keys(b), "{a}\n{b}");
            let ((a_rest, a_time), (b_rest, b_time)) = (split(a), split(b));
            assert_eq!(a_rest, b_rest);
            // Both RFC 3339 UTC to the microsecond: 2026-12-06T02:06:18.342166Z.
            for t in [&a_time, &b_time] {
                assert_eq!(t.len(), 27, "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
                humantime::parse_rfc3339(t).unwrap();
            }
        }
        assert!(
            ours.contains(r#""path":"/v1/chat/\"completions\"\n\u0001""#),
            "{ours}"
        );
        assert!(ours.contains(r#""target":"openai_cache_proxy::json_lines::tests""#));
    }

    #[test]
    fn a_line_formatted_while_another_is_gets_a_buffer_of_its_own() {
        with_buffer(|outer| {
            outer.extend_from_slice(b"outer");
            with_buffer(|inner| {
                assert!(inner.is_empty());
                inner.extend_from_slice(b"inner");
            });
            assert_eq!(outer, b"outer");
        });
        // The thread's buffer is emptied for the next line.
        with_buffer(|next| assert!(next.is_empty()));
    }
}
