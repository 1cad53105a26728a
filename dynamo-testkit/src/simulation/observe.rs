//! What a run must not do besides breaking an invariant: panic, or log an
//! error. Both are recorded per thread, since a run owns its thread.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

thread_local! {
    /// Panics on this thread since the run started.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Error-level log lines on this thread since the run started.
    static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Installs (once per process) a panic hook that also records the panic
/// for the thread it happened on, then runs the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

/// Panics and error logs observed during one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) panics: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// Runs `f` with panics and error-level logs of this thread recorded.
pub(crate) fn observe<T>(f: impl FnOnce() -> T) -> (T, Observed) {
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    ERRORS.with(|e| e.borrow_mut().clear());
    let echo = std::env::var("DYNAMO_SIM_LOG").ok().and_then(|l| l.parse::<Level>().ok());
    let out = tracing::subscriber::with_default(ErrorRecorder { echo }, f);
    let observed = Observed {
        panics: PANICS.with(|p| std::mem::take(&mut *p.borrow_mut())),
        errors: ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut())),
    };
    (out, observed)
}

/// A subscriber that keeps error-level events (as text), and prints the
/// events up to `echo` (`DYNAMO_SIM_LOG=debug`, to follow a replayed seed).
struct ErrorRecorder {
    echo: Option<Level>,
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for ErrorRecorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() == Level::ERROR || self.echo.is_some_and(|echo| *metadata.level() <= echo)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text(format!("{}: ", event.metadata().target()));
        event.record(&mut text);
        if self.echo.is_some() {
            eprintln!("[{:?} {}] {}", tokio::time::Instant::now(), event.metadata().level(), text.0);
        }
        if *event.metadata().level() == Level::ERROR {
            ERRORS.with(|e| e.borrow_mut().push(text.0));
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_error_logs_of_the_run_are_recorded() {
        let ((), seen) = observe(|| {
            tracing::info!("not an error");
            tracing::error!(key = "k", "broken");
            let _ = std::panic::catch_unwind(|| panic!("boom"));
        });
        assert_eq!(seen.errors.len(), 1, "{seen:?}");
        assert!(seen.errors[0].contains("broken"));
        assert_eq!(seen.panics.len(), 1);
        assert!(seen.panics[0].contains("boom"));
        let ((), clean) = observe(|| ());
        assert_eq!(clean, Observed::default());
    }
}
