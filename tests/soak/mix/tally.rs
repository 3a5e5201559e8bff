//! Per-kind counts of the `mix` phase, and their table row.

#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub requests: u64,
    pub ok: u64,
    pub bad: u64,
    pub server_errors: u64,
    pub limited: u64,
    pub hit: u64,
    pub miss: u64,
    pub coalesced: u64,
    pub bypass: u64,
    pub other: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.bad += o.bad;
        self.server_errors += o.server_errors;
        self.limited += o.limited;
        self.hit += o.hit;
        self.miss += o.miss;
        self.coalesced += o.coalesced;
        self.bypass += o.bypass;
        self.other += o.other;
    }

    pub fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.requests,
            self.ok,
            self.bad,
            self.server_errors,
            self.limited,
            self.hit,
            self.miss,
            self.coalesced,
            self.bypass,
            self.other
        )
    }
}
