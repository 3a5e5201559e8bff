//! The savings ledger: what each cache hit spared the caller, in tokens and (with a
//! PRICE_TABLE) in US dollars, per model. A stored response's model and token usage are read
//! once, on its first hit ([`TokenUsage::of_response`], kept with the entry), and so is the
//! handle to its model's counters ([`Savings::counters`]); every hit adds them up.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::per_thread::PerThread;

/// Models tracked one by one; any further model is counted under [`OTHER_MODEL`], so a
/// client inventing model names cannot grow the ledger or the metrics without bound.
pub const MAX_MODELS: usize = 64;
pub const OTHER_MODEL: &str = "other";

/// Token usage of one stored response, as the upstream reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUsage {
    pub model: Arc<str>,
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Deserialize)]
struct Answer {
    model: Option<String>,
    usage: Option<UsageFields>,
}

/// Chat/completions and embeddings name them `prompt_tokens`/`completion_tokens`; the
/// Responses API `input_tokens`/`output_tokens`.
#[derive(Deserialize)]
struct UsageFields {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// How many `data:` events from the end of a stream are looked at for usage: OpenAI sends it
/// in the last event before `[DONE]` (with `stream_options.include_usage`).
const SSE_EVENTS_SCANNED: usize = 4;

impl TokenUsage {
    /// Reads `model` and `usage` from a JSON answer, or from the last events of an event
    /// stream. `None` when the answer carries no usage.
    pub fn of_response(body: &[u8], event_stream: bool) -> Option<Self> {
        if !event_stream {
            return Self::of_json(body).ok().flatten();
        }
        body.split(|&b| b == b'\n')
            .rev()
            .filter_map(|line| line.strip_prefix(b"data:"))
            .map(<[u8]>::trim_ascii)
            .filter(|data| *data != b"[DONE]")
            .take(SSE_EVENTS_SCANNED)
            .find_map(|data| Self::of_json(data).ok().flatten())
    }

    /// Usage from a JSON answer: `Err` when `json` is not well-formed JSON (cut short, say),
    /// `Ok(None)` when it is but carries no usage. One parse serves both the completeness
    /// check before storing and the ledger.
    pub fn of_json(json: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        let answer: Answer = match serde_json::from_slice(json) {
            Ok(answer) => answer,
            // Well-formed, just not an object with these fields.
            Err(e) if e.is_data() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(usage) = answer.usage else {
            return Ok(None);
        };
        let prompt = usage.prompt_tokens.unwrap_or(0);
        let completion = usage.completion_tokens.unwrap_or(0);
        Ok(Some(Self {
            model: answer.model.unwrap_or_else(|| "unknown".into()).into(),
            prompt,
            completion,
            total: usage.total_tokens.unwrap_or(prompt + completion),
        }))
    }
}

/// USD per million input and output tokens, by model (PRICE_TABLE).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable(HashMap<String, Price>);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl PriceTable {
    /// Parses `model=input/output,...`, e.g. `gpt-4o=2.50/10.00,gpt-4o-mini=0.15/0.60`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut table = HashMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (model, prices) = item
                .split_once('=')
                .ok_or_else(|| format!("'{item}' has no '=' (expected model=input/output)"))?;
            let (input, output) = prices
                .split_once('/')
                .ok_or_else(|| format!("'{item}' has no '/' between the two prices"))?;
            let price = |p: &str| match p.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!(
                    "'{}' in '{item}' is not a price (a number >= 0)",
                    p.trim()
                )),
            };
            let model = model.trim();
            if model.is_empty() {
                return Err(format!("'{item}' has an empty model name"));
            }
            table.insert(
                model.to_owned(),
                Price {
                    input_per_million: price(input)?,
                    output_per_million: price(output)?,
                },
            );
        }
        if table.is_empty() {
            return Err("no model=input/output entries".into());
        }
        Ok(Self(table))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The price of `model`, or of the model it is a dated snapshot of
    /// (`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini` unless listed itself).
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.0.get(model) {
            return Some(*p);
        }
        let (base, date) = model.len().checked_sub(11).map(|i| model.split_at(i))?;
        let dated = date.len() == 11
            && date.as_bytes()[0] == b'-'
            && date[1..].bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if dated {
            self.0.get(base).copied()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

/// The counters of one model; clones of the exported metrics, so both views agree. Each
/// thread adds to its own share ([`PerThread`]): every hit on the model adds to all of them.
#[derive(Debug)]
pub struct ModelSavings {
    pub requests: Counter<u64, PerThread>,
    pub prompt: Counter<u64, PerThread>,
    pub completion: Counter<u64, PerThread>,
    pub total: Counter<u64, PerThread>,
    /// Present when PRICE_TABLE prices this model, with the price it was given.
    pub usd: Option<(Counter<f64, PerThread>, Price)>,
}

impl ModelSavings {
    /// Adds one hit's worth of `usage`.
    pub fn add(&self, usage: &TokenUsage) {
        self.requests.inc();
        self.prompt.inc_by(usage.prompt);
        self.completion.inc_by(usage.completion);
        self.total.inc_by(usage.total);
        if let Some((usd, price)) = &self.usd {
            usd.inc_by(
                (usage.prompt as f64 * price.input_per_million
                    + usage.completion as f64 * price.output_per_million)
                    / 1e6,
            );
        }
    }
}

/// Per-model savings of cache hits that carried usage.
pub struct Savings {
    prices: PriceTable,
    models: DashMap<Arc<str>, Arc<ModelSavings>>,
    requests: Family<ModelLabels, Counter<u64, PerThread>>,
    tokens: Family<TokenLabels, Counter<u64, PerThread>>,
    usd: Family<ModelLabels, Counter<f64, PerThread>>,
}

impl Savings {
    pub fn new(prices: PriceTable) -> Self {
        Self {
            prices,
            models: DashMap::new(),
            requests: Family::default(),
            tokens: Family::default(),
            usd: Family::default(),
        }
    }

    pub fn priced(&self) -> bool {
        !self.prices.is_empty()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_hits_with_usage",
            "Cache hits whose stored answer reported token usage, by model",
            self.requests.clone(),
        );
        registry.register(
            "tokens_saved",
            "Tokens the cache spared the upstream, by model and kind (prompt, completion)",
            self.tokens.clone(),
        );
        registry.register(
            "usd_saved",
            "Estimated US dollars the cache saved (PRICE_TABLE), by model",
            self.usd.clone(),
        );
    }

    /// The counters hits on `model` add to (those of [`OTHER_MODEL`] once [`MAX_MODELS`]
    /// models are tracked), created on first use. An entry keeps them after its first hit, so
    /// a hit takes no lock of the map and hashes no model name.
    pub fn counters(&self, model: &Arc<str>) -> Arc<ModelSavings> {
        if let Some(m) = self.models.get(model.as_ref()) {
            return Arc::clone(&m);
        }
        let name: Arc<str> = if self.models.len() < MAX_MODELS {
            model.clone()
        } else {
            OTHER_MODEL.into()
        };
        self.models
            .entry(name.clone())
            .or_insert_with(|| {
                let label = ModelLabels {
                    model: name.to_string(),
                };
                let tokens = |kind| {
                    self.tokens.get_or_create_owned(&TokenLabels {
                        model: name.to_string(),
                        kind,
                    })
                };
                Arc::new(ModelSavings {
                    requests: self.requests.get_or_create_owned(&label),
                    prompt: tokens("prompt"),
                    completion: tokens("completion"),
                    // Totals are in /stats only: prompt + completion is the exported sum.
                    total: Counter::default(),
                    usd: self
                        .prices
                        .price(&name)
                        .map(|price| (self.usd.get_or_create_owned(&label), price)),
                })
            })
            .clone()
    }

    /// Every model's counters, for `/stats`.
    pub fn by_model(&self) -> Vec<(Arc<str>, Arc<ModelSavings>)> {
        let mut all: Vec<_> = self
            .models
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_json_answers_and_the_end_of_streams() {
        let chat = br#"{"id":"x","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        let u = TokenUsage::of_response(chat, false).unwrap();
        assert_eq!(
            (&*u.model, u.prompt, u.completion, u.total),
            ("gpt-4o-mini-2024-07-18", 12, 30, 42)
        );
        let embedding = br#"{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let u = TokenUsage::of_response(embedding, false).unwrap();
        assert_eq!((u.prompt, u.completion, u.total), (8, 0, 8));
        let responses =
            br#"{"model":"gpt-4o","usage":{"input_tokens":5,"output_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            TokenUsage::of_response(responses, false)
                .unwrap()
                .completion,
            7
        );
        assert_eq!(
            TokenUsage::of_response(br#"{"model":"m","usage":null}"#, false),
            None
        );
        assert_eq!(TokenUsage::of_response(b"not json", false), None);
        assert!(TokenUsage::of_json(br#"{"model":"m","usage":{"prompt_tokens":1"#).is_err());
        assert!(matches!(TokenUsage::of_json(b"[1,2]"), Ok(None)));

        let stream = b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";
        let u = TokenUsage::of_response(stream, true).unwrap();
        assert_eq!((&*u.model, u.total), ("gpt-4o", 4));
        let without = b"data: {\"model\":\"gpt-4o\",\"choices\":[]}\n\ndata: [DONE]\n\n";
        assert_eq!(TokenUsage::of_response(without, true), None);
    }

    #[test]
    fn price_tables_parse_and_price_dated_snapshots() {
        let t = PriceTable::parse("gpt-4o=2.50/10.00, gpt-4o-mini=0.15/0.60").unwrap();
        assert_eq!(t.price("gpt-4o").unwrap().output_per_million, 10.0);
        assert_eq!(
            t.price("gpt-4o-mini-2024-07-18").unwrap().input_per_million,
            0.15
        );
        assert_eq!(t.price("gpt-4o-2024-08-06").unwrap().input_per_million, 2.5);
        assert_eq!(
            t.price("gpt-4o-audio-preview"),
            None,
            "only a date suffix falls back"
        );
        assert_eq!(t.price("o1"), None);
        for bad in [
            "gpt-4o",
            "gpt-4o=1",
            "gpt-4o=a/1",
            "=1/2",
            "m=-1/2",
            "m=1/inf",
            "",
        ] {
            assert!(PriceTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hits_add_up_per_model_and_models_are_capped() {
        let s = Savings::new(PriceTable::parse("gpt-4o-mini=0.15/0.60").unwrap());
        let u = TokenUsage {
            model: "gpt-4o-mini-2024-07-18".into(),
            prompt: 1_000_000,
            completion: 500_000,
            total: 1_500_000,
        };
        s.counters(&u.model).add(&u);
        s.counters(&u.model).add(&u);
        let all = s.by_model();
        assert_eq!(all.len(), 1);
        let m = &all[0].1;
        assert_eq!(
            (m.requests.get(), m.prompt.get(), m.total.get()),
            (2, 2_000_000, 3_000_000)
        );
        let usd = m.usd.as_ref().unwrap().0.get();
        assert!((usd - 2.0 * (0.15 + 0.30)).abs() < 1e-9, "{usd}");
        for i in 0..(MAX_MODELS + 10) {
            let other = TokenUsage {
                model: format!("m{i}").into(),
                ..u.clone()
            };
            s.counters(&other.model).add(&other);
        }
        let all = s.by_model();
        assert_eq!(all.len(), MAX_MODELS + 1);
        let other = all.iter().find(|(n, _)| &**n == OTHER_MODEL).unwrap();
        assert_eq!(other.1.requests.get(), 11);
        assert!(other.1.usd.is_none());
    }
}
