//! The `EventSink` port of a trace store over the shared writer
//! ([`event_sink_on_writer!`](crate::event_sink_on_writer)). Each backend keeps its open,
//! its reads and what it reports as its write-ahead log.

/// Implement the `EventSink` port for a trace store type that owns a
/// [`WriterHandle`](metis_ports::writer::WriterHandle), with a `Debug` showing the file and the
/// counters and a `Drop` that shuts the writer down (draining the queue; blocking the
/// dropping thread). The type must have `writer(&self) -> &WriterHandle` and
/// `path(&self) -> &Path`; `wal_bytes` is a `fn(&Self) -> u64` (the engine's log size). The
/// impls are written into the calling adapter crate.
#[macro_export]
macro_rules! event_sink_on_writer {
    ($store:ty, wal_bytes = $wal_bytes:expr) => {
        #[$crate::__async_trait]
        impl $crate::__ports::trace::EventSink for $store {
            fn emit(&self, event: $crate::__domain::events::Event) {
                self.writer().emit(event);
            }

            async fn flush(
                &self,
            ) -> ::core::result::Result<(), $crate::__ports::trace::TraceError> {
                $crate::flush(self.writer())
                    .await
                    .map_err($crate::__ports::trace::TraceError::Unavailable)
            }

            fn stats(&self) -> $crate::__ports::trace::SinkStats {
                self.writer().stats()
            }

            fn is_writable(&self) -> bool {
                self.writer().is_writable()
            }

            fn wal_bytes(&self) -> u64 {
                let wal_bytes: fn(&$store) -> u64 = $wal_bytes;
                wal_bytes(self)
            }
        }

        impl ::std::fmt::Debug for $store {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($store))
                    .field("path", &self.path())
                    .field("stats", &self.writer().stats())
                    .finish_non_exhaustive()
            }
        }

        impl ::core::ops::Drop for $store {
            fn drop(&mut self) {
                // Session stores share the writer; it stops when the trace store goes.
                self.writer().shutdown_blocking();
            }
        }
    };
}
