//! A hand-written ingest client for the tests: open a stream, say hello, send reports, await
//! acknowledgements, and read the status a refused stream ends with.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sockfleet_proto::v1;
use sockfleet_proto::v1::agent_message::Body as AgentBody;
use sockfleet_proto::v1::ingest_client::IngestClient;
use sockfleet_proto::v1::server_message::Body as ServerBody;
use sqlx::postgres::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

/// Longest any single step of a stream may take before the test fails instead of hanging.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A channel to the server at `url` (`http://ADDRESS`).
pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("server URL")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// A valid hello of protocol generation 1.
pub fn hello(host_id: &str, run_id: &str) -> v1::Hello {
    v1::Hello {
        protocol_version: v1::PROTOCOL_VERSION,
        host_id: host_id.to_owned(),
        hostname: format!("{host_id}.example"),
        kernel_release: "6.1.0-test".to_owned(),
        agent_version: "0.0.0-test".to_owned(),
        labels: [("env".to_owned(), "test".to_owned())].into(),
        run_id: run_id.to_owned(),
        collector: "netlink".to_owned(),
        interval_ms: 1000,
    }
}

/// `at` as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos fit i32"),
    }
}

/// A report with the given counts and sysctls (`None`: the kernel lacks the setting).
pub fn report(
    sequence: u64,
    at: DateTime<Utc>,
    ipv4: v1::StateCounts,
    ipv6: v1::StateCounts,
    sysctls: &[(&str, Option<&str>)],
) -> v1::Report {
    v1::Report {
        sequence,
        collected_at: Some(timestamp(at)),
        ipv4: Some(ipv4),
        ipv6: Some(ipv6),
        sysctls: sysctls
            .iter()
            .map(|(name, value)| v1::Sysctl {
                name: (*name).to_owned(),
                value: value.map(str::to_owned),
            })
            .collect(),
        dropped_reports: 0,
        kernel: Some(v1::KernelCounters {
            active_opens: 1000 + sequence,
            listen_drops: 3,
            ..Default::default()
        }),
        breakdowns: None,
        namespaces: Vec::new(),
    }
}

/// A plausible report: a few established and TIME_WAIT sockets that vary with the sequence, listeners
/// on both families.
pub fn plain_report(sequence: u64, at: DateTime<Utc>) -> v1::Report {
    let ipv4 = v1::StateCounts {
        established: 10 + sequence,
        time_wait: 100 + sequence,
        listen: 4,
        ..Default::default()
    };
    let ipv6 = v1::StateCounts {
        listen: 2,
        ..Default::default()
    };
    report(sequence, at, ipv4, ipv6, &[])
}

/// An agent message carrying `body`.
pub fn message(body: AgentBody) -> v1::AgentMessage {
    v1::AgentMessage { body: Some(body) }
}

/// A message carrying a hello.
pub fn hello_message(hello: v1::Hello) -> v1::AgentMessage {
    message(AgentBody::Hello(hello))
}

/// A message carrying a report.
pub fn report_message(report: v1::Report) -> v1::AgentMessage {
    message(AgentBody::Report(report))
}

/// One open ingest stream, driven by hand.
pub struct AgentStream {
    outbound: mpsc::Sender<v1::AgentMessage>,
    inbound: Streaming<v1::ServerMessage>,
}

impl AgentStream {
    /// Opens a stream that starts with `first` (sent before the call, as an agent does with its hello).
    /// Fails with the status the server answered the call with.
    pub async fn start(url: &str, first: Vec<v1::AgentMessage>) -> Result<AgentStream, Status> {
        let (outbound, outbound_rx) = mpsc::channel(16);
        for message in first {
            outbound.send(message).await.expect("outbound channel open");
        }
        let mut client = IngestClient::new(channel(url).await);
        let response = tokio::time::timeout(
            STEP_TIMEOUT,
            client.stream(ReceiverStream::new(outbound_rx)),
        )
        .await
        .expect("the server did not answer the stream call in time")?;
        Ok(AgentStream {
            outbound,
            inbound: response.into_inner(),
        })
    }

    /// Opens a stream with `hello` and reads the server's welcome.
    pub async fn open(url: &str, hello: v1::Hello) -> Result<(AgentStream, v1::Welcome), Status> {
        let mut stream = AgentStream::start(url, vec![hello_message(hello)]).await?;
        match stream.next().await? {
            Some(ServerBody::Welcome(welcome)) => Ok((stream, welcome)),
            other => panic!("the first server message was not a welcome: {other:?}"),
        }
    }

    /// Sends one message (the server may already have ended the stream; that shows on the inbound side).
    pub async fn send(&self, message: v1::AgentMessage) {
        let _ = self.outbound.send(message).await;
    }

    /// Sends one report.
    pub async fn send_report(&self, report: v1::Report) {
        self.send(report_message(report)).await;
    }

    /// The next server message; `Ok(None)` when the stream ended cleanly.
    pub async fn next(&mut self) -> Result<Option<ServerBody>, Status> {
        let message = tokio::time::timeout(STEP_TIMEOUT, self.inbound.message())
            .await
            .expect("no server message in time")?;
        Ok(message.map(|message| message.body.expect("server message without body")))
    }

    /// Reads acknowledgements until one covers `sequence` (acks are cumulative), returning every ack
    /// sequence seen on the way. Fails with the status if the stream ends with one.
    pub async fn acks_until(&mut self, sequence: u64) -> Result<Vec<u64>, Status> {
        let mut seen = Vec::new();
        loop {
            match self.next().await? {
                Some(ServerBody::Ack(ack)) => {
                    seen.push(ack.sequence);
                    if ack.sequence >= sequence {
                        return Ok(seen);
                    }
                }
                Some(ServerBody::Settings(_)) => {}
                Some(ServerBody::Welcome(welcome)) => {
                    panic!("a second welcome on one stream: {welcome:?}")
                }
                None => panic!(
                    "the stream ended before report {sequence} was acknowledged (acks: {seen:?})"
                ),
            }
        }
    }

    /// Reads until the server ends the stream with an error status, and returns it. Panics if the stream
    /// ends cleanly.
    pub async fn refusal(&mut self) -> Status {
        loop {
            match self.next().await {
                Err(status) => return status,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended cleanly; expected an error status"),
            }
        }
    }

    /// Half-closes the stream and waits for the server to end it cleanly.
    pub async fn finish(self) {
        let AgentStream {
            outbound,
            mut inbound,
        } = self;
        drop(outbound);
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, inbound.message())
                .await
                .expect("the server did not end the stream in time after a half-close");
            match message {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(status) => panic!("the stream ended with {status:?} after a clean half-close"),
            }
        }
    }
}

/// Opens a stream starting with `messages` and returns the error status the server ends it with,
/// whether it refuses the call itself or ends the stream later. The request side stays open until
/// then, so the refusal cannot be a reaction to the agent hanging up.
pub async fn refusal(url: &str, messages: Vec<v1::AgentMessage>) -> Status {
    match AgentStream::start(url, messages).await {
        Err(status) => status,
        Ok(mut stream) => stream.refusal().await,
    }
}

/// Opens a stream with `hello`, sends `reports`, and waits until the last is acknowledged. Returns the
/// welcome and every ack sequence received.
pub async fn deliver(
    url: &str,
    hello: v1::Hello,
    reports: Vec<v1::Report>,
) -> (v1::Welcome, Vec<u64>) {
    let last = reports
        .iter()
        .map(|report| report.sequence)
        .max()
        .expect("at least one report");
    let (mut stream, welcome) = AgentStream::open(url, hello)
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    for report in reports {
        stream.send_report(report).await;
    }
    let acks = stream
        .acks_until(last)
        .await
        .unwrap_or_else(|status| panic!("valid reports were refused: {status:?}"));
    stream.finish().await;
    (welcome, acks)
}

/// Rows in each table the ingest path writes, by table name.
pub async fn stored_rows(pool: &PgPool) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for (table, sql) in [
        ("hosts", "SELECT count(*) FROM hosts"),
        ("agent_runs", "SELECT count(*) FROM agent_runs"),
        ("reports", "SELECT count(*) FROM reports"),
        ("sysctl_changes", "SELECT count(*) FROM sysctl_changes"),
    ] {
        let count: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        counts.insert(table, count);
    }
    counts
}

/// The expected [`stored_rows`] for the given counts.
pub fn rows(
    hosts: i64,
    agent_runs: i64,
    reports: i64,
    sysctl_changes: i64,
) -> BTreeMap<&'static str, i64> {
    [
        ("hosts", hosts),
        ("agent_runs", agent_runs),
        ("reports", reports),
        ("sysctl_changes", sysctl_changes),
    ]
    .into()
}
