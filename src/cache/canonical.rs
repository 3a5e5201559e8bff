//! Canonical JSON for the cache key: object keys sorted, no insignificant whitespace, values
//! as parsed. The bytes are exactly `serde_json::to_vec(&serde_json::Value)` of the body (a
//! property test holds it to that), but strings are borrowed from the body where possible
//! instead of allocating a `Value` tree: this runs on every cacheable request, hits included.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

enum Canon<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Canon<'a>>),
    /// Sorted by key; for a repeated key the last value wins (as in `serde_json::Map`).
    Object(Vec<(Cow<'a, str>, Canon<'a>)>),
}

/// The canonical form of `body`, or `None` if it is not JSON.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let value: Canon<'_> = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    write(&value, &mut out);
    Some(out)
}

fn write(v: &Canon<'_>, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail; serde_json escapes strings exactly as for a Value.
    match v {
        Canon::Null => out.extend_from_slice(b"null"),
        Canon::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Canon::Number(n) => serde_json::to_writer(&mut *out, n).expect("write to Vec"),
        Canon::String(s) => serde_json::to_writer(&mut *out, s.as_ref()).expect("write to Vec"),
        Canon::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Canon::Object(entries) => {
            out.push(b'{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k.as_ref()).expect("write to Vec");
                let _ = out.write_all(b":");
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

impl<'de> Deserialize<'de> for Canon<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CanonVisitor)
    }
}

struct CanonVisitor;

impl<'de> Visitor<'de> for CanonVisitor {
    type Value = Canon<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Canon::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Canon::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Canon::Number(n.into()))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Canon::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // As `serde_json::Value` does: a non-finite float becomes null.
        Ok(Number::from_f64(n).map_or(Canon::Null, Canon::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Canon::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Canon::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Canon::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Canon::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Canon<'de>)> = Vec::new();
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            entries.push((key.0, map.next_value()?));
        }
        // Stable sort keeps equal keys in arrival order; keep the last of each run.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(Cow<'de, str>, Canon<'de>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match deduped.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => deduped.push(entry),
            }
        }
        Ok(Canon::Object(deduped))
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// The reference: parse into a `Value` (a BTreeMap per object) and print it compactly.
    fn via_value(body: &[u8]) -> Option<Vec<u8>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn matches_the_value_round_trip_on_tricky_input() {
        for body in [
            &br#"{"b":1,"a":{"d":2,"c":[3,{"z":null,"y":true}]}}"#[..],
            br#"{"a":1,"a":2}"#,
            br#"{"\u0061":1,"a\n":"x\"y\\z","\u00e9":"\u00e9"}"#,
            br#"[1.0, 1e2, -0, -0.0, 12345678901234567890, -9223372036854775808, 0.1]"#,
            br#"  "just a string"  "#,
            b"null",
            b"{}",
            b"[]",
        ] {
            assert_eq!(
                canonical_json(body),
                via_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for bad in [&b"{not json"[..], b"", b"{\"a\":1,}", b"[1] [2]"] {
            assert_eq!(canonical_json(bad), None);
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn properties_canonical_bytes_equal_the_value_round_trip(v in json(), pretty in any::<bool>()) {
            let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            prop_assert_eq!(canonical_json(&body), via_value(&body));
        }
    }
}
