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

#[cfg(test)]
mod tests {
    use super::*;

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
