//! Building and running the server: the one path `main` and the tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sockfleet_proto::v1;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tokio::sync::Notify;

use crate::alerts::engine::AlertEngine;
use crate::alerts::fleet;
use crate::alerts::routing::Routing;
use crate::api::query::QueryService;
use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::ingest::{BatchWriter, IngestService};
use crate::local_agent;
use crate::notify::Notifier;
use crate::storage::{self, Store, redact_password};

/// How long the server waits for open connections to close when stopping.
const CONNECTIONS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for the batch writer to commit what it holds when stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A server whose database is open and migrated and whose port is bound, ready to run.
pub struct Application {
    listener: TcpListener,
    config: ServerConfig,
    store: Arc<dyn Store>,
}

impl Application {
    /// Opens the database (creating the data directory for SQLite) and binds the listening port.
    pub async fn build(config: ServerConfig) -> anyhow::Result<Application> {
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
        let store = storage::open(&config.database_url).await.with_context(|| {
            format!(
                "cannot open the database {}",
                redact_password(&config.database_url)
            )
        })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Application {
            listener,
            config,
            store,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("listening socket has no address")
    }

    /// Serves until `shutdown` is cancelled, then stops in order: the local agent delivers what it has,
    /// agent streams are closed, in-flight reports are committed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let address = self.local_addr()?;
        let serving = CancellationToken::new();
        let alerting = Arc::clone(&self.config.alerting);
        let transitions = Arc::new(Notify::new());
        let (engine, engine_task) = if alerting.enabled {
            let routing = Routing::new(alerting.webhooks.clone().into());
            let (engine, task) = AlertEngine::spawn(
                Arc::clone(&self.store),
                Arc::clone(&alerting),
                routing.clone(),
                Arc::clone(&transitions),
            );
            let fleet = fleet::spawn(
                Arc::clone(&self.store),
                Arc::clone(&alerting),
                routing,
                Arc::clone(&transitions),
                serving.clone(),
            );
            (Some(engine), Some((task, fleet)))
        } else {
            (None, None)
        };
        let notifying = CancellationToken::new();
        let external_url = alerting
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        let notifier = Notifier::spawn(
            Arc::clone(&self.store),
            Arc::clone(&alerting),
            transitions,
            external_url,
            notifying.clone(),
        )?;
        let (writer, writer_task) = BatchWriter::spawn(
            Arc::clone(&self.store),
            self.config.batch,
            engine,
            serving.clone(),
        );
        let ingest = IngestService::new(
            Arc::clone(&self.store),
            writer,
            serving.clone(),
            self.config.agent_interval,
        );
        api::metrics::handle();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<v1::ingest_server::IngestServer<IngestService>>()
            .await;
        health
            .set_serving::<v1::query_server::QueryServer<QueryService>>()
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .context("cannot build gRPC reflection")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("cannot build gRPC reflection")?;

        let router = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ingest.into_server())
            .add_service(QueryService::new(Arc::clone(&self.store)).into_server())
            .into_axum_router()
            .merge(api::router(AppState {
                store: Arc::clone(&self.store),
            }))
            .fallback(api::fallback);

        let local_agent = CancellationToken::new();
        let local_agent_task = self
            .config
            .local_agent
            .then(|| local_agent::spawn(address, self.config.agent_interval, local_agent.clone()));

        let server_stopping = serving.clone();
        let mut server = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(server_stopping.cancelled_owned())
                .await
        });

        tokio::select! {
            () = shutdown.cancelled() => tracing::info!("stopping"),
            ended = &mut server => {
                local_agent.cancel();
                ended.context("server task failed")?.context("server failed")?;
                anyhow::bail!("the server stopped serving unexpectedly");
            }
        }
        local_agent.cancel();
        if let Some(task) = local_agent_task {
            let _ = task.await;
        }
        health
            .set_not_serving::<v1::ingest_server::IngestServer<IngestService>>()
            .await;
        serving.cancel();
        // A connection whose peer no longer answers would hold a graceful shutdown forever.
        match tokio::time::timeout(CONNECTIONS_TIMEOUT, &mut server).await {
            Ok(ended) => ended
                .context("server task failed")?
                .context("server failed")?,
            Err(_) => {
                tracing::warn!("some connections did not close within 10 s; closing them");
                server.abort();
            }
        }
        drain(writer_task).await;
        if let Some((engine_task, fleet_task)) = engine_task {
            // The writer held the last handle: the engine finishes what it was given, then ends.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, engine_task).await;
            let _ = fleet_task.await;
        }
        notifying.cancel();
        if tokio::time::timeout(DRAIN_TIMEOUT, notifier.join())
            .await
            .is_err()
        {
            tracing::warn!(
                "webhook attempts in flight did not finish; they are retried at the next start"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn drain(writer_task: JoinHandle<()>) {
    match tokio::time::timeout(DRAIN_TIMEOUT, writer_task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "batch writer failed"),
        Err(_) => tracing::error!(
            "batch writer did not finish within 10 s; unacknowledged reports will be resent by agents"
        ),
    }
}
