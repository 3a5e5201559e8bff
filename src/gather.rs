//! A body gathered from its chunks. The usual body arrives in one chunk, which is kept as it
//! came instead of being copied into a buffer of its own.

use bytes::{Bytes, BytesMut};

#[derive(Default)]
pub struct Gathered {
    first: Option<Bytes>,
    /// Everything so far, once a second chunk came (empty until then, or while every chunk
    /// so far was empty).
    rest: BytesMut,
}

impl Gathered {
    /// Adds the next chunk. `expected` is the whole body's length when known: room for it is
    /// reserved once, when a second chunk comes.
    pub fn push(&mut self, chunk: Bytes, expected: usize) {
        match &self.first {
            None => self.first = Some(chunk),
            Some(first) => {
                if self.rest.is_empty() {
                    self.rest.reserve(expected.max(first.len() + chunk.len()));
                    self.rest.extend_from_slice(first);
                }
                self.rest.extend_from_slice(&chunk);
            }
        }
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        if self.rest.is_empty() {
            self.first.as_ref().map_or(0, Bytes::len)
        } else {
            self.rest.len()
        }
    }

    pub fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            self.first.unwrap_or_default()
        } else {
            self.rest.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(chunks: &[&'static [u8]]) -> (Bytes, usize) {
        let mut g = Gathered::default();
        for c in chunks {
            g.push(Bytes::from_static(c), 0);
        }
        let len = g.len();
        (g.into_bytes(), len)
    }

    #[test]
    fn one_chunk_is_kept_without_a_copy_and_more_are_joined_in_order() {
        let chunk = Bytes::from_static(b"whole body");
        let mut one = Gathered::default();
        one.push(chunk.clone(), 10);
        assert_eq!(
            one.into_bytes().as_ptr(),
            chunk.as_ptr(),
            "the same bytes, not a copy"
        );

        for (chunks, whole) in [
            (&[][..], &b""[..]),
            (&[&b"ab"[..], b"", b"c"][..], b"abc"),
            (&[&b""[..], b"", b"xy", b"z"][..], b"xyz"),
            (&[&b""[..], b""][..], b""),
        ] {
            assert_eq!(gather(chunks), (Bytes::from_static(whole), whole.len()));
        }
    }
}
