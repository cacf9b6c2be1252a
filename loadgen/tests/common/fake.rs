//! A fake gRPC server on the h2 crate's server that answers each Echo the way the test's
//! script says: OK, a gRPC error status, a stream reset with any HTTP/2 code, GOAWAY, or the
//! connection dropped; and that can be stopped and started again on the same port.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use http::{HeaderMap, Request, Response};
use krpc_proto::v1::{EchoRequest, EchoResponse, InfoResponse};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the server does with a call.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// Echo the payload, grpc-status 0.
    Ok,
    /// A trailers-only response with this grpc-status.
    Status(i32),
    /// RST_STREAM with this code.
    Reset(h2::Reason),
    /// GOAWAY with this code, and the connection closed.
    GoAway(h2::Reason),
    /// The TCP connection dropped, no goodbye.
    Drop,
}

type Script = Arc<dyn Fn(u64) -> Reply + Send + Sync>;

pub struct FakeServer {
    pub addr: SocketAddr,
    /// Echo calls that reached the server (Info not counted), across restarts.
    pub calls: Arc<AtomicU64>,
    script: Script,
    stop: CancellationToken,
}

impl FakeServer {
    /// Serves on 127.0.0.1:0; `script` gets each Echo call's number, from 0.
    pub async fn start(script: impl Fn(u64) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        Self::serve(listener, Arc::new(script), calls)
    }

    fn serve(listener: TcpListener, script: Script, calls: Arc<AtomicU64>) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn({
            let (script, calls, stop) = (script.clone(), calls.clone(), stop.clone());
            async move {
                loop {
                    let tcp = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(tcp, script.clone(), calls.clone(), stop.clone()));
                }
            }
        });
        Self {
            addr,
            calls,
            script,
            stop,
        }
    }

    /// Closes the listener and every connection at once (a crash, as a client sees it).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Serves again on the same port, with the same script and call count.
    pub async fn restart(&self) -> Self {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        Self::serve(listener, self.script.clone(), self.calls.clone())
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn connection(
    tcp: TcpStream,
    script: Script,
    calls: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = conn.accept() => next,
        };
        let Some(Ok((request, respond))) = next else {
            return;
        };
        if request.uri().path().ends_with("/Info") {
            tokio::spawn(answer(request, respond, Reply::Ok, true));
            continue;
        }
        match script(calls.fetch_add(1, Ordering::SeqCst)) {
            Reply::GoAway(reason) => {
                conn.abrupt_shutdown(reason);
                while let Some(Ok(_)) = conn.accept().await {}
                return;
            }
            Reply::Drop => return,
            reply => {
                tokio::spawn(answer(request, respond, reply, false));
            }
        }
    }
}

fn grpc_frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).unwrap();
    out.freeze()
}

async fn answer(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    reply: Reply,
    info: bool,
) {
    let ok = || {
        Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    match reply {
        Reply::Ok => {
            let mut body = request.into_body();
            let mut bytes = BytesMut::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            let frame = if info {
                grpc_frame(&InfoResponse::default())
            } else {
                let mut bytes = bytes.freeze();
                bytes.advance(5);
                let request = EchoRequest::decode(bytes).unwrap();
                grpc_frame(&EchoResponse {
                    payload: request.payload,
                })
            };
            let Ok(mut stream) = respond.send_response(ok(), false) else {
                return;
            };
            let _ = stream.send_data(frame, false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let _ = stream.send_trailers(trailers);
        }
        Reply::Status(code) => {
            let mut response = ok();
            response
                .headers_mut()
                .insert("grpc-status", code.to_string().parse().unwrap());
            let _ = respond.send_response(response, true);
        }
        Reply::Reset(reason) => respond.send_reset(reason),
        Reply::GoAway(_) | Reply::Drop => unreachable!("handled by the connection"),
    }
}
