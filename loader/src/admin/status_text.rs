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
}

impl StatusText {
    /// The text `write` writes, compressed as it is written (the whole text never exists).
    pub fn compress(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Self {
        struct Counted<W> {
            inner: W,
            len: usize,
        }
        impl<W: Write> Write for Counted<W> {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                let written = self.inner.write(bytes)?;
                self.len += written;
                Ok(written)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.inner.flush()
            }
        }
        let mut out = Counted { inner: FrameEncoder::new(Vec::new()), len: 0 };
        write(&mut out).expect("writing to memory does not fail");
        let mut compressed = out.inner.finish().expect("writing to memory does not fail");
        compressed.shrink_to_fit();
        StatusText { compressed: compressed.into(), len: out.len }
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
        }
    }
}

/// [`StatusText::body`]: the text in chunks of at most [`CHUNK_BYTES`], with its exact length.
pub struct StatusBody {
    decoder: FrameDecoder<io::Cursor<Bytes>>,
    remaining: usize,
}

impl Body for StatusBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let mut chunk = vec![0; self.remaining.min(CHUNK_BYTES)];
        let result = self.decoder.read_exact(&mut chunk).map(|()| {
            self.remaining -= chunk.len();
            Frame::data(Bytes::from(chunk))
        });
        Poll::Ready(Some(result))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
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

    #[test]
    fn repetitive_reports_take_a_small_part_of_their_size() {
        let original = text_of(1 << 20);
        let text = StatusText::compress(|w| w.write_all(original.as_bytes()));
        assert!(text.compressed_len() * 4 < original.len(), "{} bytes", text.compressed_len());
    }
}
