//! The dashboard's read-only PostgreSQL connection: opened lazily, shared by all requests
//! (tokio-postgres pipelines concurrent queries on one connection), reopened after the
//! server went away.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::error::ApiError;

/// A reconnecting handle to the reader role's connection.
pub struct Db {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl Db {
    /// A handle for `url`; nothing is opened until the first query.
    pub fn new(url: String) -> Db {
        Db {
            url,
            client: Mutex::new(None),
        }
    }

    /// The open connection, connecting first if there is none or it closed.
    pub async fn client(&self) -> Result<Arc<Client>, ApiError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = clickstream_db::connect(&self.url).await?;
        // UTC days for "today"; a runaway query must not pin the page; and even if the
        // role were misconfigured, this session cannot write.
        client
            .batch_execute(
                "SET TIME ZONE 'UTC';
                 SET statement_timeout = '10s';
                 SET default_transaction_read_only = on;",
            )
            .await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}
