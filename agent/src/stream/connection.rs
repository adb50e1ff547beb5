//! The gRPC stream to the server, kept open across failures.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sockfleet_proto::v1;
use sockfleet_proto::v1::ingest_client::IngestClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::backlog::Outgoing;
use super::queue::ReportQueue;
use super::wire::report_message;
use crate::config::{MAX_INTERVAL, MIN_INTERVAL};

/// How long the agent keeps trying to deliver pending reports after it was asked to stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages buffered between the stream task and the transport: one, as a decoded report with large
/// breakdowns takes several times its encoded size; the send window bounds what the transport holds.
const OUTBOUND_BUFFER: usize = 1;
/// Most bytes of reports (as encoded) sent and not yet acknowledged: keeps the memory a catch-up after
/// an outage takes bounded, whatever the size of the backlog. At least one report is always in flight.
const SEND_WINDOW_BYTES: usize = 256 * 1024;
/// Most reports sent and not yet acknowledged (the server accepts more per stream).
const SEND_WINDOW_REPORTS: usize = 128;
/// A connection that lived this long resets the reconnect backoff.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(30);

/// Delays between reconnection attempts: exponential growth (0.5 s doubling up to 30 s) with full
/// jitter, so thousands of agents that lost the same server do not come back in lockstep.
struct ReconnectDelay {
    ceilings: backon::ExponentialBackoff,
}

impl ReconnectDelay {
    /// Shortest delay, so a flapping server is not hammered.
    const FLOOR: Duration = Duration::from_millis(100);
    /// Longest delay.
    const CEILING: Duration = Duration::from_secs(30);

    fn new() -> ReconnectDelay {
        ReconnectDelay {
            ceilings: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Self::CEILING)
                .without_max_times()
                .build(),
        }
    }

    /// A uniformly random delay between the floor and the current exponential ceiling.
    fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceilings.next().unwrap_or(Self::CEILING);
        ceiling.mul_f64(rand::random::<f64>()).max(Self::FLOOR)
    }
}

/// Where and as whom to stream.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// The server's URL (`http://host:7070`).
    pub server: String,
    /// The hello sent first on every connection.
    pub hello: v1::Hello,
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("invalid server URL {url:?}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("server answered {:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("server closed the stream")]
    Closed,
    #[error("protocol violation by the server: {0}")]
    Protocol(&'static str),
}

/// Streams the queue's reports to the server until `shutdown`, reconnecting with exponential backoff
/// and jitter. On shutdown it spends at most a few seconds delivering what is still pending.
///
/// `interval` receives the collection period the server asks for.
pub async fn maintain_stream(
    target: &StreamTarget,
    queue: &ReportQueue,
    interval: &watch::Sender<Duration>,
    shutdown: &CancellationToken,
) {
    let mut backoff = ReconnectDelay::new();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match stream_once(target, queue, interval, shutdown).await {
            Ok(()) => return,
            Err(error @ StreamError::BadUrl { .. }) => {
                tracing::error!(%error, "cannot stream; fix --server");
                shutdown.cancelled().await;
                return;
            }
            Err(StreamError::Status(status)) if refused_sequence(&status).is_some() => {
                let refused = refused_sequence(&status);
                if refused == queue.oldest_pending() {
                    queue.drop_refused();
                }
                tracing::error!(
                    sequence = refused,
                    code = ?status.code(),
                    message = status.message(),
                    "server refused a report; dropped it"
                );
            }
            Err(error) => {
                if started.elapsed() >= HEALTHY_CONNECTION {
                    backoff = ReconnectDelay::new();
                }
                let delay = backoff.next_delay();
                let counters = queue.counters();
                tracing::warn!(
                    %error,
                    retry_in = ?delay,
                    pending = counters.pending,
                    spooled = counters.spooled,
                    dropped = counters.dropped,
                    "stream to server lost"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn stream_once(
    target: &StreamTarget,
    queue: &ReportQueue,
    interval: &watch::Sender<Duration>,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let channel = connect(&target.server).await?;
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_BUFFER);
    let hello = v1::AgentMessage {
        body: Some(v1::agent_message::Body::Hello(target.hello.clone())),
    };
    outbound
        .send(hello)
        .await
        .map_err(|_| StreamError::Closed)?;
    let mut inbound = IngestClient::new(channel)
        .max_decoding_message_size(64 * 1024)
        .stream(ReceiverStream::new(outbound_rx))
        .await?
        .into_inner();

    let welcome = match inbound.message().await?.and_then(|message| message.body) {
        Some(v1::server_message::Body::Welcome(welcome)) => welcome,
        Some(_) => return Err(StreamError::Protocol("first message was not a welcome")),
        None => return Err(StreamError::Closed),
    };
    queue.acknowledge(welcome.committed_sequence);
    queue.request_full_sysctls();
    tracing::info!(
        server = %target.server,
        committed = welcome.committed_sequence,
        pending = queue.counters().pending,
        "connected"
    );

    let mut sent_up_to = welcome.committed_sequence;
    let mut in_flight = InFlight::default();
    let mut next: Option<Outgoing> = None;
    let mut flush_deadline: Option<Instant> = None;
    loop {
        if flush_deadline.is_some() && queue.counters().pending == 0 {
            return Ok(());
        }
        let may_send = in_flight.has_room();
        if next.is_none() && may_send {
            next = queue.next_after(sent_up_to);
        }
        let deadline = flush_deadline.unwrap_or_else(|| Instant::now() + MAX_INTERVAL);
        tokio::select! {
            message = inbound.message() => {
                let body = message?.ok_or(StreamError::Closed)?.body;
                if let Some(acknowledged) = apply_server_message(body, queue, interval) {
                    in_flight.acknowledge(acknowledged);
                }
            }
            permit = outbound.reserve(), if next.is_some() => {
                let permit = permit.map_err(|_| StreamError::Closed)?;
                if let Some(outgoing) = next.take() {
                    sent_up_to = outgoing.sequence;
                    in_flight.sent(outgoing.sequence, outgoing.encoded_len);
                    permit.send(report_message(outgoing.report));
                }
            }
            () = queue.wait_pushed(), if next.is_none() && may_send => {}
            () = shutdown.cancelled(), if flush_deadline.is_none() => {
                flush_deadline = Some(Instant::now() + FLUSH_TIMEOUT);
            }
            () = tokio::time::sleep_until(deadline), if flush_deadline.is_some() => {
                tracing::warn!(pending = queue.counters().pending, "stopping with unacknowledged reports");
                return Ok(());
            }
        }
    }
}

/// Reports sent on this stream and not acknowledged yet: the send window.
#[derive(Debug, Default)]
struct InFlight {
    reports: VecDeque<(u64, usize)>,
    bytes: usize,
}

impl InFlight {
    fn has_room(&self) -> bool {
        self.reports.is_empty()
            || (self.bytes < SEND_WINDOW_BYTES && self.reports.len() < SEND_WINDOW_REPORTS)
    }

    fn sent(&mut self, sequence: u64, bytes: usize) {
        self.reports.push_back((sequence, bytes));
        self.bytes += bytes;
    }

    fn acknowledge(&mut self, sequence: u64) {
        while let Some(&(sent, bytes)) = self.reports.front() {
            if sent > sequence {
                break;
            }
            self.reports.pop_front();
            self.bytes -= bytes;
        }
    }
}

async fn connect(server: &str) -> Result<Channel, StreamError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|source| StreamError::BadUrl {
            url: server.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    endpoint.connect().await.map_err(StreamError::Connect)
}

/// Applies a message from the server; returns the sequence it acknowledged, if it was an ack.
fn apply_server_message(
    body: Option<v1::server_message::Body>,
    queue: &ReportQueue,
    interval: &watch::Sender<Duration>,
) -> Option<u64> {
    match body {
        Some(v1::server_message::Body::Ack(ack)) => {
            queue.acknowledge(ack.sequence);
            return Some(ack.sequence);
        }
        Some(v1::server_message::Body::Settings(settings)) if settings.interval_ms > 0 => {
            let requested = Duration::from_millis(u64::from(settings.interval_ms));
            if (MIN_INTERVAL..=MAX_INTERVAL).contains(&requested) {
                tracing::info!(interval = ?requested, "server changed the collection interval");
                interval.send_replace(requested);
            } else {
                tracing::warn!(interval = ?requested, "ignoring an out-of-range interval from the server");
            }
        }
        Some(v1::server_message::Body::Settings(_)) => {}
        Some(v1::server_message::Body::Welcome(_)) => {
            tracing::warn!("ignoring a second welcome from the server");
        }
        None => tracing::debug!("ignoring an empty or unknown message from the server"),
    }
    None
}

/// The sequence of the report the server refused as invalid, if that is why the stream ended.
fn refused_sequence(status: &tonic::Status) -> Option<u64> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    status
        .metadata()
        .get(v1::REFUSED_SEQUENCE_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_is_bounded_in_bytes_and_count() {
        let mut window = InFlight::default();
        assert!(window.has_room());
        window.sent(1, SEND_WINDOW_BYTES * 2);
        assert!(!window.has_room(), "one large report fills it");
        window.acknowledge(1);
        assert!(window.has_room());
        for sequence in 2..2 + SEND_WINDOW_REPORTS as u64 {
            window.sent(sequence, 10);
        }
        assert!(!window.has_room());
        window.acknowledge(2);
        assert!(window.has_room());
        window.acknowledge(u64::MAX);
        assert_eq!((window.reports.len(), window.bytes), (0, 0));
    }

    #[test]
    fn reconnect_delays_grow_and_spread() {
        let samples: Vec<Vec<Duration>> = (0..200)
            .map(|_| {
                let mut delay = ReconnectDelay::new();
                (0..10).map(|_| delay.next_delay()).collect()
            })
            .collect();
        for attempts in &samples {
            for (attempt, delay) in attempts.iter().enumerate() {
                let ceiling =
                    Duration::from_millis(500 * (1 << attempt)).min(ReconnectDelay::CEILING);
                assert!(
                    *delay >= ReconnectDelay::FLOOR && *delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
        }
        // Full jitter: the tenth attempts of 200 agents spread over most of 0-30 s.
        let tenth: Vec<Duration> = samples.iter().map(|attempts| attempts[9]).collect();
        let below_ten = tenth
            .iter()
            .filter(|d| **d < Duration::from_secs(10))
            .count();
        let above_twenty = tenth
            .iter()
            .filter(|d| **d > Duration::from_secs(20))
            .count();
        assert!(
            below_ten > 20 && above_twenty > 20,
            "{below_ten} {above_twenty}"
        );
    }
}
