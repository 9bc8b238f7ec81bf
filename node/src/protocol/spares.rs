//! Buffers kept between exchanges: a transfer of many requests reuses them instead of
//! allocating (and zeroing) new ones for each request.

use std::sync::{Mutex, PoisonError};

/// At most `max` spare buffers of type `T`, shared by every exchange of the process.
pub(crate) struct Spares<T> {
    kept: Mutex<Vec<T>>,
    max: usize,
}

impl<T> Spares<T> {
    /// A pool that keeps at most `max` buffers.
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            max,
        }
    }

    /// A kept buffer, if there is one.
    pub(crate) fn take(&self) -> Option<T> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Keeps `buffer` for later, unless enough are kept already.
    pub(crate) fn give_back(&self, buffer: T) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < self.max {
            kept.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_bound_and_hands_them_back() {
        let spares = Spares::new(2);
        assert_eq!(spares.take(), None::<u8>);
        for buffer in 1..=3 {
            spares.give_back(buffer);
        }
        assert_eq!(spares.take(), Some(2));
        assert_eq!(spares.take(), Some(1));
        assert_eq!(spares.take(), None);
    }
}
