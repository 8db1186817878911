//! The `/skein/rpc/1` request-response codec: one frame each way per stream,
//! `[u32 big-endian length][skein_protocol::codec frame]`. A length over the
//! limit is refused before any of the body is read or allocated; the body
//! buffer grows with what actually arrives, not with what the length claims.

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use skein_protocol::codec;
use skein_protocol::wire::{WireMessage, WireReply};
use std::io;

/// A request as the codec sees it: pre-encoded by the sender's handle (so
/// encoding runs in the caller's task), decoded on arrival. A frame that does
/// not decode still reaches the actor, which answers with the reason.
#[derive(Debug)]
pub(crate) enum Req {
    Out(Vec<u8>),
    In(Result<WireMessage, String>),
}

#[derive(Debug)]
pub(crate) enum Resp {
    Out(WireReply),
    In(Result<WireReply, String>),
}

#[derive(Clone, Debug)]
pub(crate) struct RpcCodec {
    pub max_frame: usize,
}

fn invalid(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text)
}

/// Reads one length-prefixed frame of at most `limit` bytes.
pub(crate) async fn read_frame<T>(io: &mut T, limit: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!(
            "frame of {len} bytes is over the {limit} byte RPC limit: refused"
        )));
    }
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    AsyncReadExt::take(&mut *io, len as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

/// Frames up to this size are written with their length in one piece.
const SMALL_FRAME: usize = 64 * 1024;

/// Writes one length-prefixed frame of at most `limit` bytes.
pub(crate) async fn write_frame<T>(io: &mut T, frame: &[u8], limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|&n| n as usize <= limit)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes is over the {limit} byte RPC limit",
                    frame.len()
                ),
            )
        })?;
    if frame.len() <= SMALL_FRAME {
        // One write: one yamux frame, one noise frame, one syscall.
        let mut buf = Vec::with_capacity(4 + frame.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(frame);
        io.write_all(&buf).await?;
    } else {
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(frame).await?;
    }
    io.flush().await
}

impl request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.max_frame).await?;
        Ok(Req::In(
            codec::decode::<WireMessage>(&frame).map_err(|e| format!("bad request: {e}")),
        ))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.max_frame).await?;
        Ok(Resp::In(
            codec::decode::<WireReply>(&frame).map_err(|e| format!("bad reply: {e}")),
        ))
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Req::Out(frame) => write_frame(io, &frame, self.max_frame).await,
            Req::In(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an inbound request cannot be sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let reply = match res {
            Resp::Out(reply) => reply,
            Resp::In(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an inbound reply cannot be sent",
                ))
            }
        };
        let frame = codec::encode(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        write_frame(io, &frame, self.max_frame).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::io::Cursor;
    use libp2p::request_response::Codec as _;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn proto() -> StreamProtocol {
        StreamProtocol::new(super::super::RPC_PROTOCOL)
    }

    #[tokio::test]
    async fn round_trips_requests_and_replies() {
        let mut c = RpcCodec { max_frame: 1024 };
        let msg = WireMessage::Heartbeat {
            node_id: "n1".into(),
            at: 42,
        };
        let mut buf = Vec::new();
        let frame = codec::encode(&msg).expect("encode");
        c.write_request(&proto(), &mut Cursor::new(&mut buf), Req::Out(frame))
            .await
            .expect("write");
        match c
            .read_request(&proto(), &mut Cursor::new(&buf))
            .await
            .expect("read")
        {
            Req::In(Ok(got)) => assert_eq!(got, msg),
            other => panic!("unexpected {other:?}"),
        }
        let mut buf = Vec::new();
        c.write_response(
            &proto(),
            &mut Cursor::new(&mut buf),
            Resp::Out(WireReply::Ack),
        )
        .await
        .expect("write");
        match c
            .read_response(&proto(), &mut Cursor::new(&buf))
            .await
            .expect("read")
        {
            Resp::In(Ok(WireReply::Ack)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn undecodable_frame_reaches_the_actor_with_the_reason() {
        let mut c = RpcCodec { max_frame: 1024 };
        let mut buf = Vec::new();
        write_frame(&mut Cursor::new(&mut buf), &[9, 1, 2], 1024)
            .await
            .expect("write");
        match c.read_request(&proto(), &mut Cursor::new(&buf)).await {
            Ok(Req::In(Err(text))) => assert!(text.contains("version 9"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Serves a length prefix claiming 4 GiB, then counts every byte asked for.
    struct Claims {
        header: [u8; 4],
        pos: usize,
        asked_for_body: bool,
    }

    impl AsyncRead for Claims {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.pos >= 4 {
                self.asked_for_body = true;
                return Poll::Ready(Ok(0));
            }
            let n = buf.len().min(4 - self.pos);
            let start = self.pos;
            buf[..n].copy_from_slice(&self.header[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        let mut r = Claims {
            header: u32::MAX.to_be_bytes(),
            pos: 0,
            asked_for_body: false,
        };
        let err = read_frame(&mut r, super::super::MAX_RPC_FRAME)
            .await
            .expect_err("must refuse");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the"), "{err}");
        assert!(!r.asked_for_body);
    }

    #[tokio::test]
    async fn short_frames_and_oversized_writes_are_errors() {
        let mut buf = 100u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[1, 2, 3]);
        let err = read_frame(&mut Cursor::new(&buf), 1024)
            .await
            .expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut out = Vec::new();
        let err = write_frame(&mut Cursor::new(&mut out), &[0u8; 2048], 1024)
            .await
            .expect_err("too big");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(out.is_empty(), "nothing written");
    }
}
