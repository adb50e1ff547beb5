//! The `sockfleet.v1.Ingest` gRPC service: one task per agent stream.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sockfleet_proto::v1;
use sockfleet_proto::v1::agent_message::Body as AgentBody;
use sockfleet_proto::v1::server_message::Body as ServerBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use super::batch_writer::{BatchWriter, Commit};
use super::validate;
use crate::storage::{AgentSession, IncomingReport, Store};

/// Largest message an agent may send, in bytes: a report with breakdowns for a few hundred network
/// namespaces fits.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Reports of one stream that may be waiting for their commit before the stream stops being read.
const IN_FLIGHT_PER_STREAM: usize = 256;

/// Receives agents' streams, validates what they send and acknowledges reports once committed.
#[derive(Clone)]
pub struct IngestService {
    store: Arc<dyn Store>,
    writer: BatchWriter,
    shutdown: CancellationToken,
    agent_interval: Option<Duration>,
}

impl IngestService {
    /// A service committing through `writer`; streams end when `shutdown` is cancelled. When
    /// `agent_interval` is set, every agent is told to collect at that period.
    pub fn new(
        store: Arc<dyn Store>,
        writer: BatchWriter,
        shutdown: CancellationToken,
        agent_interval: Option<Duration>,
    ) -> IngestService {
        IngestService {
            store,
            writer,
            shutdown,
            agent_interval,
        }
    }

    /// The service wrapped for tonic, with the message size limit applied.
    pub fn into_server(self) -> v1::ingest_server::IngestServer<IngestService> {
        v1::ingest_server::IngestServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<v1::ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let mut hello = self.receive_hello(&mut inbound).await?;
        // The agent announces its own interval; when the server imposes one, that is the period the
        // agent will collect at (it is told below), so silence and rates are judged by it.
        let announced = hello.interval;
        if let Some(interval) = self.agent_interval {
            hello.interval = interval;
        }
        let session = Arc::new(AgentSession::new(hello));
        let committed = self
            .store
            .committed_sequence(&session.hello.host_id, &session.hello.run_id)
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot look up the agent's committed sequence");
                Status::unavailable("the server cannot reach its database; retry later")
            })?;

        let (outbound, outbound_rx) = mpsc::channel(IN_FLIGHT_PER_STREAM + 2);
        let welcome = ServerBody::Welcome(v1::Welcome {
            committed_sequence: committed,
            protocol_version: v1::PROTOCOL_VERSION,
        });
        send(&outbound, welcome).await;
        if let Some(interval) = self
            .agent_interval
            .filter(|interval| *interval != announced)
        {
            let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
            send(
                &outbound,
                ServerBody::Settings(v1::Settings { interval_ms }),
            )
            .await;
        }
        tracing::info!(
            host_id = %session.hello.host_id,
            run_id = session.hello.run_id,
            committed,
            "agent connected"
        );

        let (pending, pending_rx) = mpsc::channel(IN_FLIGHT_PER_STREAM);
        tokio::spawn(acknowledge_in_order(pending_rx, outbound));
        tokio::spawn(read_reports(
            inbound,
            session,
            self.writer.clone(),
            pending,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(outbound_rx)))
    }
}

impl IngestService {
    async fn receive_hello(
        &self,
        inbound: &mut Streaming<v1::AgentMessage>,
    ) -> Result<sockfleet_domain::AgentHello, Status> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no hello within 30 seconds of opening the stream")
            })?
            .map_err(transport_status)?;
        let hello = match first.and_then(|message| message.body) {
            Some(AgentBody::Hello(hello)) => hello,
            Some(AgentBody::Report(_)) => {
                return Err(Status::failed_precondition(
                    "the first message of a stream must be a hello; a report came first",
                ));
            }
            None => {
                return Err(Status::failed_precondition(
                    "the first message of a stream must be a hello",
                ));
            }
        };
        if hello.protocol_version != v1::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported; this server speaks version {} \
                 (upgrade the server or install a matching agent)",
                hello.protocol_version,
                v1::PROTOCOL_VERSION
            )));
        }
        validate::hello(hello).map_err(|invalid| Status::invalid_argument(invalid.to_string()))
    }
}

/// What the acknowledging task must do next, in stream order.
enum Pending {
    /// Acknowledge `sequence` once its commit resolves.
    Commit { sequence: u64, commit: Commit },
    /// End the stream with this status (after acknowledging everything before it).
    Fail(Status),
}

async fn read_reports(
    mut inbound: Streaming<v1::AgentMessage>,
    session: Arc<AgentSession>,
    writer: BatchWriter,
    pending: mpsc::Sender<Pending>,
    shutdown: CancellationToken,
) {
    let failure = loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = shutdown.cancelled() => {
                break Some(Status::unavailable("the server is shutting down; reconnect"));
            }
        };
        match message {
            Ok(None) => break None,
            Err(status) => break Some(transport_status(status)),
            Ok(Some(message)) => match message.body {
                Some(AgentBody::Report(report)) => {
                    let sequence = report.sequence;
                    match validate::report(report, Utc::now()) {
                        Ok((report, dropped_reports)) => {
                            let incoming = IncomingReport {
                                session: Arc::clone(&session),
                                report,
                                dropped_reports,
                            };
                            let commit = writer.submit(incoming).await;
                            if pending
                                .send(Pending::Commit { sequence, commit })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(invalid) => break Some(refusal(sequence, &invalid)),
                    }
                }
                Some(AgentBody::Hello(_)) => {
                    break Some(Status::failed_precondition(
                        "hello sent twice on one stream",
                    ));
                }
                None => tracing::debug!("ignoring a message of a kind this server does not know"),
            },
        }
    };
    let Some(status) = failure else {
        tracing::info!(host_id = %session.hello.host_id, run_id = session.hello.run_id, "agent disconnected");
        return;
    };
    if status.code() == Code::Unavailable {
        tracing::info!(host_id = %session.hello.host_id, message = status.message(), "ending agent stream");
    } else {
        tracing::warn!(
            host_id = %session.hello.host_id,
            code = ?status.code(),
            message = status.message(),
            "ending agent stream"
        );
    }
    let _ = pending.send(Pending::Fail(status)).await;
}

async fn acknowledge_in_order(
    mut pending: mpsc::Receiver<Pending>,
    outbound: mpsc::Sender<Result<v1::ServerMessage, Status>>,
) {
    while let Some(next) = pending.recv().await {
        let message = match next {
            Pending::Commit { sequence, commit } => match commit.await {
                Ok(Ok(())) => Ok(message(ServerBody::Ack(v1::Ack { sequence }))),
                Ok(Err(error)) => Err(Status::unavailable(format!(
                    "report {sequence} was not stored ({error}); reconnect and send it again"
                ))),
                Err(_) => Err(Status::unavailable(
                    "the server is shutting down; reconnect",
                )),
            },
            Pending::Fail(status) => Err(status),
        };
        let ends_stream = message.is_err();
        if outbound.send(message).await.is_err() || ends_stream {
            return;
        }
    }
}

fn message(body: ServerBody) -> v1::ServerMessage {
    v1::ServerMessage { body: Some(body) }
}

async fn send(outbound: &mpsc::Sender<Result<v1::ServerMessage, Status>>, body: ServerBody) {
    // The receiver lives in the response we are about to return, so this cannot fail.
    let _ = outbound.send(Ok(message(body))).await;
}

/// INVALID_ARGUMENT naming the field, with the refused sequence in metadata so the agent can drop it.
fn refusal(sequence: u64, invalid: &validate::Invalid) -> Status {
    let mut status = Status::invalid_argument(format!("report {sequence} refused: {invalid}"));
    if let Ok(value) = MetadataValue::try_from(sequence.to_string()) {
        status
            .metadata_mut()
            .insert(v1::REFUSED_SEQUENCE_HEADER, value);
    }
    status
}

/// Rewrites tonic's decoding errors into what the agent should see: an oversized message is
/// RESOURCE_EXHAUSTED (gRPC's code for size limits), with the limit in the message.
fn transport_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "message too large: {}; the limit is {MAX_MESSAGE_BYTES} bytes",
            status.message()
        ))
    } else {
        status
    }
}
