//! A TCP proxy for fault injection and connection counting.
//!
//! It sits between a client and a service on loopback and counts the client
//! connections open through it (and the most ever open at once), so tests can
//! check a pool's cap from the server's side of the wire. Faults: refuse new
//! connections, hold them without forwarding (blackhole), lose every answer
//! after the upstream did the work, or cut every open connection at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the upstream.
    Forward,
    /// Accept and close at once (the client sees a reset or EOF).
    Refuse,
    /// Accept and never answer.
    Blackhole,
    /// Forward the request, then close the client's connection the moment
    /// the upstream starts answering: the upstream did the work, the client
    /// never learns it (a lost acknowledgement).
    LoseAnswers,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    max_open: AtomicUsize,
    accepted: AtomicUsize,
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    mode: Arc<AtomicU8>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_on("127.0.0.1", upstream).await
    }

    /// Starts a proxy on `ip:0` (any loopback address, such as `127.0.0.2`,
    /// so replicas have addresses of their own) forwarding to `upstream`.
    pub async fn start_on(ip: &str, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind proxy on {ip}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let counters = Arc::new(Counters::default());
        let mode = Arc::new(AtomicU8::new(0));
        let (cut, cut_rx) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            counters.clone(),
            mode.clone(),
            cut_rx,
        ));
        Self {
            addr,
            counters,
            mode,
            cut,
            task,
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// The most client connections ever open at once.
    pub fn max_open(&self) -> usize {
        self.counters.max_open.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Changes what happens to new connections.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Closes every open connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Waits until at most `n` connections are open; false if that does not
    /// happen within `limit`.
    pub async fn wait_open_at_most(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.open() <= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.open() <= n
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

fn mode_of(value: u8) -> Mode {
    match value {
        1 => Mode::Refuse,
        2 => Mode::Blackhole,
        3 => Mode::LoseAnswers,
        _ => Mode::Forward,
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    mode: Arc<AtomicU8>,
    cut: watch::Receiver<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = mode_of(mode.load(Ordering::SeqCst));
        if mode == Mode::Refuse {
            drop(client);
            continue;
        }
        // A client that closed one connection and then opened this one sent
        // its FIN first; let that connection's task see it before counting,
        // so the count is what the wire says, not scheduling order.
        tokio::task::yield_now().await;
        let now_open = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_open.fetch_max(now_open, Ordering::SeqCst);
        let counters = counters.clone();
        let mut cut = cut.clone();
        cut.mark_unchanged();
        tokio::spawn(async move {
            let cut_now = async move {
                let _ = cut.changed().await;
            };
            tokio::select! {
                () = serve(client, upstream, mode) => {},
                () = cut_now => {},
            }
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Forwards until the client closes its side (an HTTP client never
/// half-closes while it expects an answer), then closes both sides: the
/// connection counts as closed when the client closed it.
async fn serve(client: TcpStream, upstream: SocketAddr, mode: Mode) {
    use tokio::io::AsyncReadExt;
    let (mut client_read, mut client_write) = client.into_split();
    if mode == Mode::Blackhole {
        // Hold the connection open and answer nothing.
        let mut sink = [0u8; 1024];
        while matches!(client_read.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut server_read, mut server_write) = server.into_split();
    if mode == Mode::LoseAnswers {
        let upstream = tokio::io::copy(&mut client_read, &mut server_write);
        let mut first = [0u8; 1];
        tokio::select! {
            _ = upstream => {},
            // The answer begins: drop both connections unanswered.
            _ = server_read.read(&mut first) => {},
        }
        return;
    }
    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = upstream => {},
        _ = downstream => {},
    }
}
