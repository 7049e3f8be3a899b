//! A connection's deadline wake-up, for the gate's read and write deadlines.

use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// A deadline's wake-up. An earlier wake-up already armed is kept (it comes,
/// the deadline is looked at again, and the timer re-armed), so a deadline
/// that moves later with every request costs no timer update.
#[derive(Debug, Default)]
pub(super) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Whether `at` has passed; if not, a wake-up comes by then.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
        let now = Instant::now();
        if now >= at {
            return true;
        }
        self.wake_by(cx, at, now);
        false
    }

    pub(super) fn wake_by(&mut self, cx: &mut Context<'_>, at: Instant, now: Instant) {
        match &mut self.sleep {
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            Some(s) if s.deadline() <= now || s.deadline() > at => s.as_mut().reset(at),
            Some(_) => {}
        }
        let _ = self.sleep.as_mut().expect("set above").as_mut().poll(cx);
    }
}
