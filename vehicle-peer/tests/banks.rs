//! A/B banks: file banks hold and verify images, block-device banks refuse what is not a free
//! partition, and the pair never lends the running bank for writing.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use delta::{ReadAt, WriteAt};
use proto::BlobId;
use vehicle_peer::bank::{
    Bank, BankError, BankPair, FileBank, dev_numbers, holds, mounted_at, running_slot,
};
use vehicle_peer::boot::Slot;

fn slot(name: &str) -> Slot {
    Slot::new(name).unwrap()
}

#[test]
fn a_file_bank_holds_an_image_and_says_whether_it_is_the_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank-a.img");
    let mut bank = FileBank::create(&path, 3 << 20).unwrap();
    assert_eq!(bank.capacity(), 3 << 20);
    let image: Vec<u8> = (0..(2 << 20) + 12_345u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    bank.write_all_at(0, &image).unwrap();
    bank.sync().unwrap();
    let id = BlobId::of(&image);
    assert!(holds(&bank, image.len() as u64, id).unwrap());
    // One byte off, or one byte short, is not the image.
    bank.write_all_at(77, &[image[77] ^ 1]).unwrap();
    assert!(!holds(&bank, image.len() as u64, id).unwrap());
    bank.write_all_at(77, &image[77..78]).unwrap();
    assert!(!holds(&bank, image.len() as u64 - 1, id).unwrap());

    // Reopened, it is the same bank, readable as a delta source.
    drop(bank);
    let bank = FileBank::open(&path).unwrap();
    assert_eq!(bank.capacity(), 3 << 20);
    let mut buf = [0u8; 100];
    bank.read_exact_at(1000, &mut buf).unwrap();
    assert_eq!(buf[..], image[1000..1100]);
    assert!(holds(&bank, image.len() as u64, id).unwrap());

    // Nothing is read or written past the capacity, and an image too long is named.
    let mut bank = bank;
    let error = bank.write_all_at((3 << 20) - 10, &[0; 11]).unwrap_err();
    assert!(error.to_string().contains("run past the bank's"), "{error}");
    assert!(bank.read_exact_at(3 << 20, &mut buf).is_err());
    let error = holds(&bank, (3 << 20) + 1, id).unwrap_err();
    assert!(matches!(error, BankError::TooSmall { .. }), "{error}");
    assert!(error.to_string().contains("bank-a.img"), "{error}");
}

#[test]
fn what_is_not_a_free_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, [0u8; 4096]).unwrap();
    let error = FileBank::open_block(&file).unwrap_err().to_string();
    assert!(error.contains("is not a block device"), "{error}");
    let error = FileBank::open_block(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("missing") && error.contains("reading metadata"),
        "{error}"
    );
    let error = FileBank::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains("is not a regular file"), "{error}");

    // A block device, if this machine lets the test open one read-only: mounted devices are
    // refused by name; the check reads the same table the kernel gives.
    let table = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
23 22 259:3 / /data rw,relatime shared:2 - ext4 /dev/nvme0n1p3 rw
24 22 0:21 / /proc rw - proc proc rw
";
    assert_eq!(mounted_at(table, 259, 2).as_deref(), Some("/"));
    assert_eq!(mounted_at(table, 259, 3).as_deref(), Some("/data"));
    assert_eq!(mounted_at(table, 259, 4), None);
    assert_eq!(mounted_at("garbage\n\n1 2\n", 1, 2), None);
    if let Ok(entries) = std::fs::read_dir("/dev") {
        for entry in entries.flatten() {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.file_type().is_block_device() {
                continue;
            }
            let (major, minor) = dev_numbers(meta.rdev());
            let mounted = format!("1 1 {major}:{minor} / /somewhere rw - ext4 x rw\n");
            let error = FileBank::open_block_with_mounts(&entry.path(), &mounted).unwrap_err();
            assert!(
                error.to_string().contains("is mounted at /somewhere"),
                "{error}"
            );
        }
    }
}

#[test]
fn dev_numbers_follow_the_kernels_encoding() {
    // makedev(8, 1) and makedev(259, 70000) as glibc encodes them.
    assert_eq!(dev_numbers(0x801), (8, 1));
    let (major, minor) = (259u64, 70_000u64);
    let dev = (minor & 0xff)
        | ((major & 0xfff) << 8)
        | ((minor & !0xff) << 12)
        | ((major & !0xfff) << 32);
    assert_eq!(dev_numbers(dev), (major, minor));
}

#[test]
fn the_pair_lends_only_the_other_bank_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileBank::create(&dir.path().join("a"), 4096).unwrap();
    let b = FileBank::create(&dir.path().join("b"), 4096).unwrap();
    let mut pair = BankPair::new((slot("A"), a), (slot("B"), b)).unwrap();
    let (running, other, inactive) = pair.split(&slot("A")).unwrap();
    assert!(running.path().ends_with("a"));
    assert_eq!(other, &slot("B"));
    inactive.write_all_at(0, b"new").unwrap();
    let (running, other, _) = pair.split(&slot("B")).unwrap();
    assert!(running.path().ends_with("b"));
    assert_eq!(other, &slot("A"));
    // An ECU running from neither bank gets neither.
    assert!(pair.split(&slot("C")).is_none());

    let a = FileBank::create(&dir.path().join("a2"), 4096).unwrap();
    let b = FileBank::create(&dir.path().join("b2"), 4096).unwrap();
    let error = BankPair::new((slot("A"), a), (slot("A"), b)).unwrap_err();
    assert!(
        error.to_string().contains("both banks are slot A"),
        "{error}"
    );
}

#[test]
fn the_running_slot_comes_from_the_kernel_command_line() {
    let cmdline = "console=ttyS0 root=/dev/mmcblk0p2 rauc.slot=B rootwait";
    assert_eq!(running_slot(cmdline), Some(slot("B")));
    assert_eq!(running_slot("console=ttyS0 root=/dev/sda1"), None);
    assert_eq!(running_slot("rauc.slot=B/../x"), None);
}
