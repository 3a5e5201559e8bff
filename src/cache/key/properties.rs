//! Properties of the cache key over random input (`make fuzz` runs them with many more cases).

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::Value;

use super::tests::key;
use super::{CacheKey, KEY_HEADERS, KeyHasher};

const PATH: &str = "/v1/embeddings";

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[a-zA-Z0-9 é\\\\\"\n]{0,12}".prop_map(Value::from),
    ]
}

/// Any JSON value; object keys are lower-case, so an upper-case key is never present.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object, as request bodies are.
fn object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{1,6}", json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Serialises `v` with object keys in an order and spacing chosen by `seed`.
fn scramble(v: &Value, seed: &mut u64, out: &mut String) {
    let space = |n: u64| [" ", "", "\n  ", "\t"][(n % 4) as usize];
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            let n = entries.len();
            for i in (1..n).rev() {
                entries.swap(i, (next(seed) as usize) % (i + 1));
            }
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(space(next(seed)));
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(space(next(seed)));
                out.push(':');
                scramble(val, seed, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                scramble(item, seed, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&serde_json::to_string(leaf).unwrap()),
    }
}

/// Exactly one edit of a JSON document. The index picks the node (modulo their number).
#[derive(Debug, Clone)]
enum Edit {
    /// Give the nth leaf another value (of any type).
    Leaf(usize, Value),
    /// Add a key that is not there to the nth object.
    AddKey(usize, String, Value),
    /// Remove the ith key of the nth non-empty object.
    RemoveKey(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), leaf()).prop_map(|(n, v)| Edit::Leaf(n, v)),
        (any::<usize>(), "[A-Z]{1,6}", json()).prop_map(|(n, k, v)| Edit::AddKey(n, k, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, i)| Edit::RemoveKey(n, i)),
    ]
}

fn is_leaf(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn is_object(v: &Value) -> bool {
    v.is_object()
}

fn is_filled_object(v: &Value) -> bool {
    v.as_object().is_some_and(|m| !m.is_empty())
}

fn count(v: &Value, wanted: fn(&Value) -> bool) -> usize {
    usize::from(wanted(v))
        + match v {
            Value::Array(items) => items.iter().map(|c| count(c, wanted)).sum(),
            Value::Object(map) => map.values().map(|c| count(c, wanted)).sum(),
            _ => 0,
        }
}

fn find<'a>(
    v: &'a mut Value,
    left: &mut usize,
    wanted: fn(&Value) -> bool,
) -> Option<&'a mut Value> {
    if wanted(v) {
        if *left == 0 {
            return Some(v);
        }
        *left -= 1;
    }
    match v {
        Value::Array(items) => items.iter_mut().find_map(|c| find(c, left, wanted)),
        Value::Object(map) => map.values_mut().find_map(|c| find(c, left, wanted)),
        _ => None,
    }
}

/// The nth node (modulo their number, in document order) that `wanted` accepts.
fn nth(v: &mut Value, n: usize, wanted: fn(&Value) -> bool) -> Option<&mut Value> {
    let total = count(v, wanted);
    let mut left = n.checked_rem(total)?;
    find(v, &mut left, wanted)
}

/// A value other than `old`: `candidate` unless it is equal, else `old` altered.
fn other_than(old: &Value, candidate: Value) -> Value {
    if *old != candidate {
        return candidate;
    }
    match old {
        Value::Null => Value::Bool(false),
        Value::Bool(b) => Value::Bool(!b),
        Value::String(s) => Value::String(format!("{s}x")),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i.wrapping_add(1)),
            None => Value::from(n.as_f64().expect("a finite number") + 1.0),
        },
        Value::Array(_) | Value::Object(_) => unreachable!("leaves only"),
    }
}

/// `doc` with `edit` applied. When the edit has no target (no leaf, no filled object) a key
/// is added to the top-level object instead, so exactly one thing always changes.
fn apply(mut doc: Value, edit: &Edit) -> Value {
    let add = |doc: &mut Value, n: usize, name: &str, value: Value| {
        let object = nth(doc, n, is_object).expect("the document is an object");
        let map = object.as_object_mut().expect("an object");
        assert!(
            map.insert(name.to_owned(), value).is_none(),
            "{name} was new"
        );
    };
    match edit {
        Edit::Leaf(n, candidate) => match nth(&mut doc, *n, is_leaf) {
            Some(old) => *old = other_than(old, candidate.clone()),
            None => add(&mut doc, 0, "ADDED", candidate.clone()),
        },
        Edit::AddKey(n, name, value) => add(&mut doc, *n, name, value.clone()),
        Edit::RemoveKey(n, i) => match nth(&mut doc, *n, is_filled_object) {
            Some(object) => {
                let map = object.as_object_mut().expect("an object");
                let name = map.keys().nth(i % map.len()).expect("a key").clone();
                map.remove(&name);
            }
            None => add(&mut doc, 0, "ADDED", Value::Null),
        },
    }
    doc
}

/// Header values as a client may send them: any visible bytes (obs-text too) and tabs.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(|bytes| {
        let visible: Vec<u8> = bytes
            .into_iter()
            .map(|b| match b {
                b'\t' | 0x20..=0x7e | 0x80..=0xff => b,
                other => other | 0x80,
            })
            .collect();
        HeaderValue::from_bytes(&visible).expect("visible bytes and tabs make a header value")
    })
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let mut names: Vec<HeaderName> = KEY_HEADERS.to_vec();
    names.extend([
        HeaderName::from_static("user-agent"),
        HeaderName::from_static("x-anything"),
    ]);
    prop::collection::vec((prop::sample::select(names), header_value()), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

/// Bodies of every kind: raw bytes, JSON-looking text, and nesting deeper than any parser
/// limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[\\[\\]{}\":,0-9a-zé .eE+\\-\\\\]{0,64}".prop_map(String::into_bytes),
        (1usize..400)
            .prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

proptest! {
    #[test]
    fn key_order_and_spacing_never_change_the_key(v in json(), seed in any::<u64>()) {
        let mut seed = seed;
        let mut text = String::new();
        scramble(&v, &mut seed, &mut text);
        let compact = serde_json::to_vec(&v).unwrap();
        prop_assert_eq!(key(&[], PATH, &compact), key(&[], PATH, text.as_bytes()));
    }

    /// One changed leaf, one added or one removed key: another key, however it is spaced.
    #[test]
    fn changing_exactly_one_value_or_key_gives_a_different_key(
        doc in object(),
        edit in edit(),
        seed in any::<u64>(),
    ) {
        let changed = apply(doc.clone(), &edit);
        prop_assert_ne!(&changed, &doc, "the edit changed nothing");
        let (mut seed, mut text) = (seed, String::new());
        scramble(&changed, &mut seed, &mut text);
        let original = serde_json::to_vec(&doc).unwrap();
        prop_assert_ne!(
            key(&[], PATH, &original),
            key(&[], PATH, text.as_bytes()),
            "{} vs {}",
            String::from_utf8_lossy(&original),
            text
        );
    }

    /// Whatever a client sends, deriving its key neither panics nor varies.
    #[test]
    fn keys_of_arbitrary_requests_never_panic_and_are_deterministic(
        method in "\\PC{0,12}",
        path in any::<String>(),
        headers in headers(),
        body in body(),
    ) {
        let first = CacheKey::compute(&method, &path, &headers, &body);
        let again = CacheKey::compute(&method, &path, &headers.clone(), &body.clone());
        prop_assert_eq!(first, again);
        let hasher = KeyHasher::new(&method, &path, &headers);
        prop_assert_eq!(hasher.clone().canonical(&body), first);
        prop_assert_eq!(hasher.exact(&body), KeyHasher::new(&method, &path, &headers).exact(&body));
        let hex = first.to_hex();
        prop_assert!(hex.starts_with(first.short().as_str()));
        prop_assert_eq!(&first.prefix_hex()[..], &hex.as_bytes()[..16]);
    }
}
