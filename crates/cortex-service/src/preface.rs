//! Which HTTP a new connection speaks: HTTP/2 with prior knowledge (h2c,
//! RFC 9113 §3.3), which a client announces with a fixed 24-byte preface, or
//! HTTP/1.1.
//!
//! Why not hyper-util's `auto` builder, which does the same: its HTTP/1
//! side cannot bound the request head's size, and the kit refuses a head
//! over `max_header_bytes` with 431. Reading the preface here keeps each
//! protocol's own builder with all its settings.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first, before any frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Reads the first bytes of `io`, as few as tell the protocol (one read
/// for any HTTP/1 request: no method starts like the preface past its
/// second byte), and gives them back in front of the rest.
///
/// A peer that closes first, or sends less, is HTTP/1: hyper's HTTP/1
/// side then answers or closes as it would have. No bound on time here:
/// the caller's deadline for the first request head covers this read.
pub(crate) async fn sniff<I>(mut io: I) -> std::io::Result<(Protocol, Prefixed<I>)>
where
    I: AsyncRead + Unpin,
{
    let mut prefix = [0u8; PREFACE.len()];
    let mut len = 0;
    while len < PREFACE.len() {
        let read = io.read(&mut prefix[len..]).await?;
        if read == 0 {
            break;
        }
        len += read;
        if prefix[..len] != PREFACE[..len] {
            break;
        }
    }
    let protocol = if prefix == *PREFACE {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let io = Prefixed {
        prefix,
        start: 0,
        end: len,
        io,
    };
    Ok((protocol, io))
}

/// A connection with the bytes [`sniff`] read put back in front.
pub(crate) struct Prefixed<I> {
    prefix: [u8; PREFACE.len()],
    start: usize,
    end: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(buf.remaining());
            let start = self.start;
            buf.put_slice(&self.prefix[start..start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let mut mock = chunked_reader(chunks);
        let (protocol, mut io) = sniff(&mut mock).await.expect("sniffed");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        (protocol, all)
    }

    /// A reader that returns `chunks` one write each, then EOF.
    fn chunked_reader(chunks: &[&[u8]]) -> impl AsyncRead + Unpin {
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in chunks {
                tx.write_all(&chunk).await.expect("write");
                // Let the reader take this piece alone.
                tokio::task::yield_now().await;
            }
        });
        rx
    }

    #[tokio::test]
    async fn every_byte_read_is_given_back_in_order() {
        // Longer than the preface, read whole in one go.
        let h1 = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(sniffed(&[h1]).await, (Protocol::Http1, h1.to_vec()));
        // POST and PUT share the preface's first byte only.
        let post = b"POST /tool/x HTTP/1.1\r\n\r\n";
        assert_eq!(sniffed(&[post]).await, (Protocol::Http1, post.to_vec()));
        // The preface in pieces, then a frame.
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let (protocol, bytes) = sniffed(&[&h2[..3], &h2[3..20], &h2[20..]]).await;
        assert_eq!((protocol, bytes), (Protocol::Http2, h2));
        // A peer that stops half-way through the preface: HTTP/1, its bytes kept.
        assert_eq!(
            sniffed(&[&PREFACE[..10]]).await,
            (Protocol::Http1, PREFACE[..10].to_vec())
        );
        assert_eq!(sniffed(&[]).await, (Protocol::Http1, Vec::new()));
    }
}
