//! Positioned reads: the one trait through which bao encoding, the delta decoder, the stores'
//! files and the vehicle's banks and boot media are read at an offset.

use std::io;

/// Something read at any offset, any length, exactly: a file, a bank, a byte slice.
pub trait ReadAt {
    /// Fills `buf` with the bytes at `offset`. Bytes that are not there (past the end) are an
    /// error (`UnexpectedEof`), never a short read.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

impl<R: ReadAt + ?Sized> ReadAt for &R {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}

impl<R: ReadAt + ?Sized> ReadAt for &mut R {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}

// The impl for the standard file has to live with the trait; proto itself still opens nothing,
// it reads only a file its caller opened and handed it.
impl ReadAt for std::fs::File {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Reads through to `inner` a window at a time: a read that the window in memory does not cover
/// fetches `window` bytes from its offset (fewer near `len`) and is served from them, as are the
/// reads after it that fall inside. For readers that move forward in small steps, such as bao
/// encoding a run of chunk groups (one read per group, one per parent pair): one positioned read
/// of the file per window instead of one per step.
///
/// A read longer than the window goes straight to `inner`. If the window cannot be read (the
/// file is shorter than `len`, as a partial blob's may be), the read is retried as asked, so the
/// answer is always what `inner` itself would give.
#[derive(Debug)]
pub struct ReadAhead<R> {
    inner: R,
    len: u64,
    window: usize,
    cached: std::cell::RefCell<Window>,
}

#[derive(Debug, Default)]
struct Window {
    offset: u64,
    bytes: Vec<u8>,
}

impl<R: ReadAt> ReadAhead<R> {
    /// Reads `inner`, which holds `len` bytes, `window` bytes at a time.
    pub fn new(inner: R, len: u64, window: usize) -> Self {
        Self {
            inner,
            len,
            window,
            cached: std::cell::RefCell::new(Window::default()),
        }
    }
}

impl<R: ReadAt> ReadAt for ReadAhead<R> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut cached = self.cached.borrow_mut();
        if let Some(bytes) = offset
            .checked_sub(cached.offset)
            .and_then(|start| usize::try_from(start).ok())
            .and_then(|start| cached.bytes.get(start..start.checked_add(buf.len())?))
        {
            buf.copy_from_slice(bytes);
            return Ok(());
        }
        let wanted = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let end = offset
            .saturating_add(u64::try_from(self.window).unwrap_or(u64::MAX))
            .min(self.len);
        let Some(window) = end
            .checked_sub(offset)
            .filter(|window| *window > wanted)
            .and_then(|window| usize::try_from(window).ok())
        else {
            return self.inner.read_exact_at(offset, buf);
        };
        cached.bytes.resize(window, 0);
        if self.inner.read_exact_at(offset, &mut cached.bytes).is_err() {
            cached.bytes.clear();
            return self.inner.read_exact_at(offset, buf);
        }
        cached.offset = offset;
        let bytes = cached
            .bytes
            .get(..buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A byte slice that counts the reads it serves.
    struct Counted<'a> {
        bytes: &'a [u8],
        reads: Cell<usize>,
    }

    impl ReadAt for Counted<'_> {
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.reads.set(self.reads.get() + 1);
            self.bytes.read_exact_at(offset, buf)
        }
    }

    #[test]
    fn read_ahead_answers_as_the_reader_does_with_fewer_reads() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let inner = Counted {
            bytes: &bytes,
            reads: Cell::new(0),
        };
        let ahead = ReadAhead::new(&inner, bytes.len() as u64, 4096);
        // Forward in 100-byte steps to the end: one read per window.
        let mut buf = [0u8; 100];
        for start in (0..10_000usize).step_by(100) {
            ahead.read_exact_at(start as u64, &mut buf).unwrap();
            assert_eq!(&buf[..], &bytes[start..start + 100]);
        }
        assert_eq!(inner.reads.get(), 3, "10 000 bytes in windows of 4096");
        // Backwards, a read longer than the window, and reads past the end: as the slice says.
        for (offset, len) in [
            (50u64, 10usize),
            (0, 5000),
            (9_990, 10),
            (9_995, 10),
            (20_000, 1),
        ] {
            let mut mine = vec![0u8; len];
            let mut theirs = vec![0u8; len];
            let got = ahead.read_exact_at(offset, &mut mine).map_err(|e| e.kind());
            let want = bytes
                .read_exact_at(offset, &mut theirs)
                .map_err(|e| e.kind());
            assert_eq!(got, want, "offset {offset}, {len} bytes");
            assert_eq!(mine, theirs, "offset {offset}, {len} bytes");
        }
    }

    #[test]
    fn read_ahead_over_a_short_file_falls_back_to_the_read_asked_for() {
        // The caller believes in 8192 bytes; the file holds 3000.
        let bytes = vec![7u8; 3000];
        let ahead = ReadAhead::new(&bytes, 8192, 4096);
        let mut buf = [0u8; 64];
        ahead.read_exact_at(2900, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 64]);
        let error = ahead.read_exact_at(2990, &mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_slice_reads_exactly_or_not_at_all() {
        let bytes = [1u8, 2, 3, 4];
        let mut buf = [0u8; 2];
        assert!(bytes[..].read_exact_at(1, &mut buf).is_ok());
        assert_eq!(buf, [2, 3]);
        for offset in [3, 5, u64::MAX] {
            let error = bytes[..].read_exact_at(offset, &mut buf).err();
            assert_eq!(
                error.map(|e| e.kind()),
                Some(io::ErrorKind::UnexpectedEof),
                "offset {offset}"
            );
        }
    }
}
