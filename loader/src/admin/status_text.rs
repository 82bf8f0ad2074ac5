//! `/status`'s text, kept compressed between rebuilds and decompressed as it is sent.
//!
//! The document is JSON reports for every policy, route and Gateway: 97 MB at 100,000 backends,
//! a tenth of the serving loader's memory, held from one rebuild to the next for a request that
//! may never come. The text is so repetitive that LZ4 keeps it in a few percent of that, at
//! about the speed it is rendered; a response decompresses it chunk by chunk as the socket takes
//! them, so serving it costs a chunk, not the text.

use hyper::body::{Body, Bytes, Frame, SizeHint};
use lz4_flex::frame::{FrameDecoder, FrameEncoder};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

/// What one body frame holds at most.
const CHUNK_BYTES: usize = 64 << 10;

/// A text, LZ4-compressed (frame format), with its length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusText {
    compressed: Bytes,
    len: usize,
    /// The text's last two bytes (`}\n` for a JSON document and its newline).
    end: [u8; 2],
}

impl StatusText {
    /// The text `write` writes, compressed as it is written (the whole text never exists).
    pub fn compress(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Self {
        struct Counted<W> {
            inner: W,
            len: usize,
            end: [u8; 2],
        }
        impl<W: Write> Write for Counted<W> {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                let written = self.inner.write(bytes)?;
                self.len += written;
                self.end = match bytes[..written] {
                    [.., a, b] => [a, b],
                    [b] => [self.end[1], b],
                    [] => self.end,
                };
                Ok(written)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.inner.flush()
            }
        }
        let mut out = Counted { inner: FrameEncoder::new(Vec::new()), len: 0, end: [0; 2] };
        write(&mut out).expect("writing to memory does not fail");
        let mut compressed = out.inner.finish().expect("writing to memory does not fail");
        compressed.shrink_to_fit();
        StatusText { compressed: compressed.into(), len: out.len, end: out.end }
    }

    /// Length of the text.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn compressed_len(&self) -> usize {
        self.compressed.len()
    }

    /// The whole text (for the dashboard, which parses it, and for tests).
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(self.len);
        FrameDecoder::new(&self.compressed[..])
            .read_to_string(&mut text)
            .expect("compressed here, from UTF-8");
        text
    }

    /// A response body that decompresses the text as it is sent.
    pub fn body(&self) -> StatusBody {
        StatusBody {
            decoder: FrameDecoder::new(io::Cursor::new(self.compressed.clone())),
            remaining: self.len,
            suffix: Bytes::new(),
        }
    }

    /// A JSON document's body with `"key":value` added as its last member, or None when the text
    /// does not end as a JSON object and its newline do.
    pub fn body_with_member(&self, key: &str, value: &str) -> Option<StatusBody> {
        if &self.end != b"}\n" || self.len < 2 {
            return None;
        }
        let suffix = format!(",{}:{value}}}\n", serde_json::Value::from(key));
        Some(StatusBody { remaining: self.len - 2, suffix: suffix.into(), ..self.body() })
    }
}

/// [`StatusText::body`]: the text in chunks of at most [`CHUNK_BYTES`] (then `suffix`), with its
/// exact length.
pub struct StatusBody {
    decoder: FrameDecoder<io::Cursor<Bytes>>,
    /// Text still to decompress and send.
    remaining: usize,
    /// Sent after the text.
    suffix: Bytes,
}

impl Body for StatusBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            if self.suffix.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.suffix)))));
        }
        let mut chunk = vec![0; self.remaining.min(CHUNK_BYTES)];
        let result = self.decoder.read_exact(&mut chunk).map(|()| {
            self.remaining -= chunk.len();
            Frame::data(Bytes::from(chunk))
        });
        Poll::Ready(Some(result))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.suffix.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.remaining + self.suffix.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn text_of(size: usize) -> String {
        (0..).map(|i| format!("{{\"n\":{i},\"ok\":true}},")).take(size / 10).collect()
    }

    #[test]
    fn the_body_sends_the_text_in_chunks_with_its_exact_length() {
        for size in [0, 1, 1000, 3 * CHUNK_BYTES + 17] {
            let original = text_of(size);
            let text = StatusText::compress(|w| w.write_all(original.as_bytes()));
            assert_eq!(text.len(), original.len());
            assert_eq!(text.text(), original);
            let body = text.body();
            assert_eq!(body.size_hint().exact(), Some(original.len() as u64));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut body = body;
            let mut received = Vec::new();
            runtime.block_on(async {
                while let Some(frame) = body.frame().await {
                    let data = frame.unwrap().into_data().unwrap();
                    assert!(!data.is_empty() && data.len() <= CHUNK_BYTES);
                    received.extend_from_slice(&data);
                }
            });
            assert_eq!(received, original.as_bytes());
            assert!(body.is_end_stream());
        }
    }

    fn received(mut body: StatusBody) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut received = Vec::new();
        runtime.block_on(async {
            while let Some(frame) = body.frame().await {
                received.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
        });
        received
    }

    #[test]
    fn a_member_is_added_at_the_end_of_a_json_document() {
        let document =
            format!("{{\"policies\":[{}]}}\n", text_of(3 * CHUNK_BYTES).trim_end_matches(','));
        let text = StatusText::compress(|w| w.write_all(document.as_bytes()));
        let body = text.body_with_member("probes", "[1,2]").expect("a JSON object");
        let length = body.size_hint().exact().unwrap() as usize;
        let sent = received(body);
        assert_eq!(sent.len(), length);
        let parsed: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(parsed["probes"], serde_json::json!([1, 2]));
        assert_eq!(parsed["policies"].as_array().unwrap().len(), 3 * CHUNK_BYTES / 10);
        assert!(sent.ends_with(b"]}\n"));
        let not_json = StatusText::compress(|w| w.write_all(b"plain text\n"));
        assert!(not_json.body_with_member("probes", "[]").is_none());
    }

    #[test]
    fn repetitive_reports_take_a_small_part_of_their_size() {
        let original = text_of(1 << 20);
        let text = StatusText::compress(|w| w.write_all(original.as_bytes()));
        assert!(text.compressed_len() * 4 < original.len(), "{} bytes", text.compressed_len());
    }
}
