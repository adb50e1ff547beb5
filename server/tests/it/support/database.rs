//! A fresh PostgreSQL database per test, dropped afterwards.

use rand::Rng;
use sqlx::postgres::PgPool;

/// The server every test database is created on (trust auth on loopback, as CI provides).
pub fn admin_url() -> String {
    std::env::var("SOCKFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database with a random name.
    pub async fn create() -> TestDatabase {
        let name = format!("sockfleet_test_{:016x}", rand::rng().random::<u64>());
        let admin = PgPool::connect(&admin_url())
            .await
            .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {}: {error}", admin_url()));
        // The name is generated hex, never user input; DDL cannot take bind parameters.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = admin_url();
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        TestDatabase {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// A connection pool on the test database.
    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async code, so a small runtime of its own removes the database.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = PgPool::connect(&admin_url()).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await?;
                admin.close().await;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}
