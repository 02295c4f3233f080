//! The `SessionStore` port of a store whose turns ride its trace writer
//! ([`session_store_on_writer!`](crate::session_store_on_writer)): turns queue on the shared
//! [`WriterHandle`](metis_ports::writer::WriterHandle), flushes wait on it, reads run on the
//! blocking pool with the backend's read handle. Each backend keeps only its reads.

use metis_ports::sessions::SessionError;

/// Run a blocking session read on the blocking pool.
///
/// # Errors
/// The read's error, or `Unavailable` when the task failed.
pub async fn on_pool<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, SessionError> + Send + 'static,
) -> Result<T, SessionError> {
    crate::blocking(read).await.unwrap_or_else(|e| {
        Err(SessionError::Unavailable(format!(
            "session query task failed: {e}"
        )))
    })
}

/// Implement the `SessionStore` port for a session store type that shares a trace store's
/// writer. The type must have `writer(&self) -> &WriterHandle` and
/// `reads(&self) -> Result<R, SessionError>`, the read handle taken on the caller's thread
/// (`R: Send + 'static`), whose `get(&str)`, `list(Option<&str>, u32)` and `children(&str)`
/// are the port's reads, blocking, with `SessionError`s. The impl (and a `Debug` showing the
/// counters) is written into the calling adapter crate.
#[macro_export]
macro_rules! session_store_on_writer {
    ($store:ty) => {
        #[$crate::__async_trait]
        impl $crate::__ports::sessions::SessionStore for $store {
            fn record_turn(
                &self,
                turn: $crate::__domain::sessions::SessionTurn,
            ) -> ::core::result::Result<(), $crate::__ports::sessions::SessionError> {
                self.writer().record_turn(turn)
            }

            async fn flush(
                &self,
            ) -> ::core::result::Result<(), $crate::__ports::sessions::SessionError> {
                $crate::flush(self.writer())
                    .await
                    .map_err($crate::__ports::sessions::SessionError::Unavailable)
            }

            async fn get(
                &self,
                id: &$crate::__domain::sessions::SessionId,
            ) -> ::core::result::Result<
                ::core::option::Option<$crate::__domain::sessions::SessionRecord>,
                $crate::__ports::sessions::SessionError,
            > {
                let (r, id) = (self.reads()?, id.as_str().to_owned());
                $crate::sessions::on_pool(move || r.get(&id)).await
            }

            async fn list(
                &self,
                workspace: ::core::option::Option<&str>,
                limit: u32,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::__domain::sessions::SessionRecord>,
                $crate::__ports::sessions::SessionError,
            > {
                let (r, workspace) = (self.reads()?, workspace.map(str::to_owned));
                $crate::sessions::on_pool(move || r.list(workspace.as_deref(), limit)).await
            }

            async fn children(
                &self,
                parent: &$crate::__domain::sessions::SessionId,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::__domain::sessions::SessionRecord>,
                $crate::__ports::sessions::SessionError,
            > {
                let (r, parent) = (self.reads()?, parent.as_str().to_owned());
                $crate::sessions::on_pool(move || r.children(&parent)).await
            }

            fn stats(&self) -> $crate::__ports::sessions::SessionStats {
                self.writer().session_stats()
            }
        }

        impl ::std::fmt::Debug for $store {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($store))
                    .field("stats", &self.writer().session_stats())
                    .finish_non_exhaustive()
            }
        }
    };
}
