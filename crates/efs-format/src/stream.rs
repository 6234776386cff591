//! The EFS content format: chunked AES-256-GCM, written segment by segment and read in any
//! order.
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015) as age and C2SP
//! chunked encryption use it, with AES-256-GCM. `docs/format.md` gives the byte layout; in short:
//!
//! ```text
//! header (56) | segment 0 | segment 1 | ... | last segment
//! segment i   = AES-256-GCM(content key, nonce_i, aad = header, plaintext_i) || tag (16)
//! nonce_i     = nonce base XOR (i as 11-byte big-endian || 0x01 if last else 0x00)
//! content key (32) || nonce base (12)
//!             = HKDF-SHA256(ikm = data key, salt = header salt,
//!                           info = "efs/content/v1" || header)
//! ```
//!
//! Every segment but the last holds exactly [`SEGMENT_SIZE`] plaintext bytes; the last holds
//! 1..=[`SEGMENT_SIZE`] bytes, or 0 only when the whole content is empty. The counter in the
//! nonce detects reordering, the last flag detects truncation and extension, and because the key
//! is derived from the whole header (blob id and salt included), a segment of another content
//! never opens here.
//!
//! Memory is one segment for writing and one segment per read, whatever the content's size.

use std::fmt;
use std::ops::Range;

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use zeroize::Zeroizing;

use crate::wrap::{aead_key, fill_random};
use crate::{FormatError, Key32, labels};

/// Plaintext bytes per segment: every segment but the last is full. DO NOT CHANGE (it is
/// written in the header as its log2, [`SEGMENT_SIZE_LOG2`]).
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SIZE_LOG2;
/// log2 of [`SEGMENT_SIZE`], header byte 6. DO NOT CHANGE.
pub const SEGMENT_SIZE_LOG2: u8 = 16;
/// AES-256-GCM tag bytes at the end of each segment. DO NOT CHANGE.
pub const TAG_LEN: usize = 16;
/// Ciphertext bytes of one full segment (plaintext plus tag).
pub const SEGMENT_CIPHER_LEN: usize = SEGMENT_SIZE + TAG_LEN;
/// Header bytes at the start of every content. DO NOT CHANGE.
pub const HEADER_LEN: usize = 56;
/// Header bytes 0..4. DO NOT CHANGE.
pub const MAGIC: [u8; 4] = *b"EFSc";
/// Header byte 4: the format version this crate writes and reads. DO NOT CHANGE (a new layout
/// is a new version, and this one keeps a reader and its vectors).
pub const FORMAT_VERSION: u8 = 0x01;
/// Header byte 5: cipher suite 0x01 = AES-256-GCM with HKDF-SHA256. DO NOT CHANGE.
pub const SUITE_AES_256_GCM: u8 = 0x01;
/// Length of the random blob id in the header (bytes 8..24).
pub const BLOB_ID_LEN: usize = 16;
/// Length of the random salt in the header (bytes 24..56).
pub const SALT_LEN: usize = 32;

const BLOB_ID_AT: usize = 8;
const SALT_AT: usize = BLOB_ID_AT + BLOB_ID_LEN;
const SEG: u64 = SEGMENT_SIZE as u64;
const SEG_CT: u64 = SEGMENT_CIPHER_LEN as u64;
const HDR: u64 = HEADER_LEN as u64;
const TAG: u64 = TAG_LEN as u64;

/// Number of segments of a plaintext of `plain_len` bytes: at least one.
fn segment_count_for(plain_len: u64) -> u64 {
    plain_len.div_ceil(SEG).max(1)
}

/// Ciphertext length (header included) of a plaintext of `plain_len` bytes:
/// `56 + plain_len + 16 * max(1, ceil(plain_len / 65536))`.
///
/// Saturates at `u64::MAX` for lengths no storage holds (within 2^48 bytes of `u64::MAX`); use
/// [`checked_encrypted_len`] to tell that case apart.
pub fn encrypted_len(plain_len: u64) -> u64 {
    checked_encrypted_len(plain_len).unwrap_or(u64::MAX)
}

/// [`encrypted_len`], or `None` if the result does not fit in a `u64`.
pub fn checked_encrypted_len(plain_len: u64) -> Option<u64> {
    (segment_count_for(plain_len) * TAG)
        .checked_add(HDR)?
        .checked_add(plain_len)
}

/// Plaintext length of a ciphertext of `enc_len` bytes (header included): the inverse of
/// [`encrypted_len`].
///
/// [`FormatError::Length`] if no plaintext length gives `enc_len`: shorter than a header and one
/// tag, a last segment shorter than a tag, or an empty last segment after full ones.
pub fn plaintext_len(enc_len: u64) -> Result<u64, FormatError> {
    let body = enc_len.checked_sub(HDR + TAG).ok_or(FormatError::Length)? + TAG;
    let (full, rest) = (body / SEG_CT, body % SEG_CT);
    match rest {
        // Only full segments: the last one is full too.
        0 => Ok(full * SEG),
        // A last segment of tag only: legal only as the sole segment of an empty content.
        r if r == TAG && full == 0 => Ok(0),
        r if r > TAG => Ok(full * SEG + (r - TAG)),
        _ => Err(FormatError::Length),
    }
}

/// The blob id recorded in a content header, after checking the header's fixed fields.
///
/// This does not authenticate anything (only [`Decryptor::open_segment`] does); it lets a tool
/// such as `fsck` match a blob to its index record.
pub fn header_blob_id(header: &[u8]) -> Result<[u8; BLOB_ID_LEN], FormatError> {
    let header = check_header(header)?;
    Ok(header[BLOB_ID_AT..SALT_AT]
        .try_into()
        .expect("the blob id field is exactly BLOB_ID_LEN bytes"))
}

fn check_header(header: &[u8]) -> Result<&[u8; HEADER_LEN], FormatError> {
    let header: &[u8; HEADER_LEN] = header
        .try_into()
        .map_err(|_| FormatError::Header("the header must be exactly 56 bytes"))?;
    if header[0..4] != MAGIC {
        return Err(FormatError::Header("bad magic: not an EFS content"));
    }
    if header[4] != FORMAT_VERSION {
        return Err(FormatError::Header("unsupported format version"));
    }
    if header[5] != SUITE_AES_256_GCM {
        return Err(FormatError::Header("unsupported cipher suite"));
    }
    if header[6] != SEGMENT_SIZE_LOG2 {
        return Err(FormatError::Header("unsupported segment size"));
    }
    if header[7] != 0 {
        return Err(FormatError::Header("reserved byte is not zero"));
    }
    Ok(header)
}

/// The per-content AES-256-GCM key and nonce base, derived from the data key and the header.
struct ContentKey {
    key: LessSafeKey,
    nonce_base: Zeroizing<[u8; NONCE_LEN]>,
}

impl ContentKey {
    /// HKDF-SHA256(ikm = data key, salt = header salt, info = label || header) -> 44 bytes.
    ///
    /// The info holds the whole header, so the key commits to every header byte; the header
    /// is also every segment's AAD.
    fn derive(data_key: &Key32, header: &[u8; HEADER_LEN]) -> Self {
        let mut okm = Zeroizing::new([0u8; 32 + NONCE_LEN]);
        crate::secret::hkdf_sha256(
            &header[SALT_AT..],
            data_key.as_bytes(),
            &[labels::CONTENT_V1, header],
            &mut okm[..],
        );
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&okm[..32]);
        let mut nonce_base = Zeroizing::new([0u8; NONCE_LEN]);
        nonce_base.copy_from_slice(&okm[32..]);
        ContentKey {
            key: aead_key(&key),
            nonce_base,
        }
    }

    /// nonce base XOR (idx as 11-byte big-endian counter || last flag).
    ///
    /// A `u64` index fills the low 8 of the 11 counter bytes, so the 88-bit counter can never
    /// overflow and two segments of one content never share a nonce.
    fn nonce(&self, idx: u64, last: bool) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[3..11].copy_from_slice(&idx.to_be_bytes());
        n[11] = u8::from(last);
        for (b, k) in n.iter_mut().zip(self.nonce_base.iter()) {
            *b ^= k;
        }
        Nonce::assume_unique_for_key(n)
    }
}

/// Writes one content: header first, then sealed segments as plaintext arrives.
///
/// The data key must **never** be used for two contents: every content (every version of every
/// file) gets a fresh random data key. The random per-content salt in the header is defense in
/// depth against a repeated data key, not a licence to repeat one.
///
/// Holds the derived content key (wiped when dropped) and at most one segment of plaintext
/// (in a zeroizing buffer).
pub struct Encryptor {
    sealer: SegmentSealer,
    /// Plaintext not yet sealed: at most one segment. A full segment waits here until more
    /// input shows it is not the last.
    buf: Zeroizing<Vec<u8>>,
}

impl Encryptor {
    /// Starts a content with a fresh random 32-byte salt.
    ///
    /// `blob_id` is the content's random 16-byte id: the caller stores it in the index and
    /// passes it to [`Decryptor::new`], which refuses a content with another id.
    pub fn new(data_key: &Key32, blob_id: [u8; BLOB_ID_LEN]) -> Self {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        Self::with_salt(data_key, blob_id, salt)
    }

    /// Like [`Encryptor::new`] with a chosen salt: for deterministic test vectors only.
    /// Production code must use [`Encryptor::new`].
    #[doc(hidden)]
    pub fn with_salt(data_key: &Key32, blob_id: [u8; BLOB_ID_LEN], salt: [u8; SALT_LEN]) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4] = FORMAT_VERSION;
        header[5] = SUITE_AES_256_GCM;
        header[6] = SEGMENT_SIZE_LOG2;
        header[7] = 0;
        header[BLOB_ID_AT..SALT_AT].copy_from_slice(&blob_id);
        header[SALT_AT..].copy_from_slice(&salt);
        Encryptor {
            sealer: SegmentSealer {
                ck: ContentKey::derive(data_key, &header),
                header,
                next: 0,
            },
            buf: Zeroizing::new(Vec::with_capacity(SEGMENT_SIZE)),
        }
    }

    /// The header bytes. The caller writes them first; [`Encryptor::update`] and
    /// [`Encryptor::finish`] emit only segments.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.sealer.header
    }

    /// Feeds plaintext of any length; appends zero or more complete sealed segments to `out`.
    ///
    /// A full segment is held back until more input arrives or [`Encryptor::finish`] is called,
    /// because only then is it known whether it is the last one.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.buf.len() == SEGMENT_SIZE {
                // More input follows, so the buffered segment is not the last.
                self.sealer.seal(&self.buf, false, out);
                self.buf.clear();
            }
            if self.buf.is_empty() && input.len() > SEGMENT_SIZE {
                // A whole segment with input after it: not the last, seal it without buffering.
                let (seg, rest) = input.split_at(SEGMENT_SIZE);
                self.sealer.seal(seg, false, out);
                input = rest;
                continue;
            }
            let take = (SEGMENT_SIZE - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
    }

    /// Plaintext bytes buffered and not yet sealed (at most a segment): what [`Encryptor::finish`]
    /// will still seal. For a caller counting what an upload has not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Seals the buffered plaintext as the last segment (flag set) and appends it to `out`.
    /// An empty content is one empty last segment: just its 16-byte tag.
    ///
    /// [`FormatError::Length`] (and nothing written) if segments were sealed with
    /// [`Encryptor::seal_in_place`] and nothing is buffered: the last segment would be an
    /// empty one after full ones, which no reader accepts (end those with
    /// [`Encryptor::finish_in_place`] and the last segment's bytes).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.buf.is_empty() && self.sealer.next > 0 {
            return Err(FormatError::Length);
        }
        self.sealer.seal(&self.buf, true, out);
        Ok(())
    }

    /// Seals the next segment inside the caller's buffer, copying nothing: on entry
    /// `segment` holds exactly [`SEGMENT_SIZE`] bytes of plaintext, on return that
    /// segment's ciphertext and tag (16 bytes longer). For callers that fill whole segments
    /// themselves (reading a file 64 KiB at a time); [`Encryptor::update`] costs one copy
    /// more. The segment is sealed as "not the last": end with
    /// [`Encryptor::finish_in_place`]. Produces the same bytes as `update` would.
    ///
    /// [`FormatError::Length`] (and `segment` untouched) if `segment` is not exactly one
    /// segment long or if plaintext given to `update` is still waiting: the two ways of
    /// feeding one content do not mix.
    pub fn seal_in_place(&mut self, segment: &mut Vec<u8>) -> Result<(), FormatError> {
        if segment.len() != SEGMENT_SIZE || !self.buf.is_empty() {
            return Err(FormatError::Length);
        }
        self.sealer.seal_in_place(segment, false);
        Ok(())
    }

    /// Seals the last segment inside the caller's buffer: 0..=[`SEGMENT_SIZE`] bytes of
    /// plaintext on entry (0 only for an empty content, or after `update` fed the
    /// whole content), ciphertext and tag on return. Errors as for
    /// [`Encryptor::seal_in_place`], and for an empty last segment after full ones (a
    /// content ends with the segment that holds its last byte).
    pub fn finish_in_place(mut self, segment: &mut Vec<u8>) -> Result<(), FormatError> {
        if !self.buf.is_empty() {
            if !segment.is_empty() {
                return Err(FormatError::Length);
            }
            // Plaintext fed by `update`: it is the last segment.
            let plain = std::mem::take(&mut *self.buf);
            segment.extend_from_slice(&plain);
            drop(Zeroizing::new(plain));
        } else if segment.len() > SEGMENT_SIZE || (segment.is_empty() && self.sealer.next > 0) {
            return Err(FormatError::Length);
        }
        self.sealer.seal_in_place(segment, true);
        Ok(())
    }
}

/// The sealing half of an [`Encryptor`]: key, header (the AAD) and segment counter.
struct SegmentSealer {
    ck: ContentKey,
    header: [u8; HEADER_LEN],
    /// Index of the next segment to seal.
    next: u64,
}

impl SegmentSealer {
    fn seal(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        // Reserve first so the plaintext copied into `out` is never left behind by a realloc.
        out.reserve(plain.len() + TAG_LEN);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self.seal_slice(&mut out[start..], last);
        out.extend_from_slice(&tag);
    }

    /// Seals all of `buf` (one segment's plaintext) and appends the tag.
    fn seal_in_place(&mut self, buf: &mut Vec<u8>, last: bool) {
        // Seal before growing: if appending the tag reallocates, the buffer given back to
        // the allocator holds ciphertext, never plaintext.
        let tag = self.seal_slice(&mut buf[..], last);
        buf.extend_from_slice(&tag);
    }

    fn seal_slice(&mut self, plain: &mut [u8], last: bool) -> [u8; TAG_LEN] {
        let tag = self
            .ck
            .key
            .seal_in_place_separate_tag(
                self.ck.nonce(self.next, last),
                Aad::from(&self.header[..]),
                plain,
            )
            .expect("AES-256-GCM seals one segment of 64 KiB");
        self.next = self
            .next
            .checked_add(1)
            .expect("a u64 plaintext length has at most 2^48 segments, so a u64 index never wraps");
        tag.as_ref()
            .try_into()
            .expect("an AES-256-GCM tag is 16 bytes")
    }
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("segments_sealed", &self.sealer.next)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Reads one content: checks its header, then decrypts any segment, in any order.
///
/// As for [`Encryptor`], a data key belongs to exactly one content.
pub struct Decryptor {
    ck: ContentKey,
    header: [u8; HEADER_LEN],
    enc_len: u64,
    plain_len: u64,
    segments: u64,
}

impl Decryptor {
    /// Prepares to read a content.
    ///
    /// `header` must be exactly its first [`HEADER_LEN`] bytes; `enc_len` its total ciphertext
    /// length (header included); `expected_blob_id` the id recorded in the index. Errors:
    /// [`FormatError::Header`] for a header this version does not read, [`FormatError::Length`]
    /// for an impossible `enc_len`, [`FormatError::Decrypt`] for a blob id mismatch (a content
    /// swapped for another). A wrong key is only detected by [`Decryptor::open_segment`].
    pub fn new(
        data_key: &Key32,
        header: &[u8],
        enc_len: u64,
        expected_blob_id: &[u8; BLOB_ID_LEN],
    ) -> Result<Self, FormatError> {
        let header = *check_header(header)?;
        if header[BLOB_ID_AT..SALT_AT] != expected_blob_id[..] {
            return Err(FormatError::Decrypt);
        }
        let plain_len = plaintext_len(enc_len)?;
        Ok(Decryptor {
            ck: ContentKey::derive(data_key, &header),
            header,
            enc_len,
            plain_len,
            segments: segment_count_for(plain_len),
        })
    }

    /// Plaintext length of the content, computed from its ciphertext length.
    pub fn plaintext_len(&self) -> u64 {
        self.plain_len
    }

    /// Number of segments: at least 1 (an empty content has one empty segment).
    pub fn segment_count(&self) -> u64 {
        self.segments
    }

    /// Byte offset and length, in the ciphertext, of segment `idx` (tag included).
    /// [`FormatError::Range`] if `idx >= segment_count()`.
    pub fn segment_location(&self, idx: u64) -> Result<(u64, usize), FormatError> {
        if idx >= self.segments {
            return Err(FormatError::Range);
        }
        let offset = HDR + idx * SEG_CT;
        let len = if idx + 1 == self.segments {
            self.enc_len - offset
        } else {
            SEG_CT
        };
        Ok((
            offset,
            usize::try_from(len).expect("a segment is at most 64 KiB + 16 bytes"),
        ))
    }

    /// Segments covering plaintext bytes `[start, end)` (`end` exclusive, clamped to the
    /// plaintext length). An empty range gives an empty range of segments.
    pub fn segments_for(&self, start: u64, end: u64) -> Range<u64> {
        let end = end.min(self.plain_len);
        if start >= end {
            return 0..0;
        }
        start / SEG..(end - 1) / SEG + 1
    }

    /// Plaintext offset of segment `idx`: `idx * SEGMENT_SIZE`.
    pub fn segment_plain_offset(idx: u64) -> u64 {
        idx.saturating_mul(SEG)
    }

    /// Decrypts segment `idx` in place.
    ///
    /// On entry `buf` holds exactly that segment's ciphertext and tag (as located by
    /// [`Decryptor::segment_location`]); on success exactly its plaintext. Any failure of the
    /// data (wrong length, altered, reordered, truncated, from another content, wrong key) is
    /// [`FormatError::Decrypt`] and leaves `buf` empty; an `idx` past the end is
    /// [`FormatError::Range`].
    pub fn open_segment(&self, idx: u64, buf: &mut Vec<u8>) -> Result<(), FormatError> {
        match self.open_segment_in_place(idx, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                Ok(())
            }
            Err(e) => {
                buf.clear();
                Err(e)
            }
        }
    }

    /// As [`Decryptor::open_segment`], on a slice that holds exactly segment `idx`'s
    /// ciphertext and tag (so a caller can decrypt many segments inside one read buffer
    /// without copying). Returns the plaintext length: the plaintext is `buf[..n]`.
    /// On failure the slice is zeroed.
    pub fn open_segment_in_place(&self, idx: u64, buf: &mut [u8]) -> Result<usize, FormatError> {
        let (_, len) = self.segment_location(idx)?;
        if buf.len() != len {
            buf.fill(0);
            return Err(FormatError::Decrypt);
        }
        let last = idx + 1 == self.segments;
        match self
            .ck
            .key
            .open_in_place(self.ck.nonce(idx, last), Aad::from(&self.header[..]), buf)
        {
            Ok(_) => Ok(len - TAG_LEN),
            Err(_) => {
                buf.fill(0);
                Err(FormatError::Decrypt)
            }
        }
    }

    /// As [`Decryptor::open_segment_in_place`], but out of place: `sealed` holds exactly
    /// segment `idx`'s ciphertext and tag, and its plaintext is written to the start of
    /// `out` (which must hold at least that many bytes). Returns the plaintext length `n`:
    /// the plaintext is `out[..n]`. Decrypting from where the ciphertext was read into the
    /// buffer that is sent saves a copy of it (the server's direct reads of large blobs).
    /// On failure `out[..n]` is zeroed, as far as `out` reaches.
    pub fn open_segment_to(
        &self,
        idx: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, FormatError> {
        let (_, len) = self.segment_location(idx)?;
        let n = len - TAG_LEN;
        let fail = |out: &mut [u8]| {
            let end = n.min(out.len());
            out[..end].fill(0);
            Err(FormatError::Decrypt)
        };
        if sealed.len() != len || out.len() < n {
            return fail(out);
        }
        let last = idx + 1 == self.segments;
        let (ct, tag) = sealed.split_at(n);
        match self.ck.key.open_separate_gather(
            self.ck.nonce(idx, last),
            Aad::from(&self.header[..]),
            ct,
            tag,
            &mut out[..n],
        ) {
            Ok(()) => Ok(n),
            Err(_) => fail(out),
        }
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("plaintext_len", &self.plain_len)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];
    const ID: [u8; 16] = [0x17; 16];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn encrypt(plain: &[u8], chunk: usize) -> Vec<u8> {
        let mut enc = Encryptor::new(&Key32::from_bytes(KEY), ID);
        let mut out = enc.header().to_vec();
        let mut fed = 0;
        for c in plain.chunks(chunk.max(1)) {
            enc.update(c, &mut out);
            fed += c.len();
            // Only full segments come out, and at most one segment (at least one byte) waits.
            let body = out.len() - HEADER_LEN;
            assert_eq!(body % SEGMENT_CIPHER_LEN, 0);
            let held = fed - body / SEGMENT_CIPHER_LEN * SEGMENT_SIZE;
            assert!((1..=SEGMENT_SIZE).contains(&held), "held {held}");
        }
        enc.finish(&mut out).unwrap();
        out
    }

    fn decrypt(ct: &[u8]) -> Result<Vec<u8>, FormatError> {
        let hdr = ct.get(..HEADER_LEN).ok_or(FormatError::Length)?;
        let d = Decryptor::new(&Key32::from_bytes(KEY), hdr, ct.len() as u64, &ID)?;
        let mut plain = Vec::new();
        for i in 0..d.segment_count() {
            let (off, len) = d.segment_location(i)?;
            let mut buf = ct[off as usize..off as usize + len].to_vec();
            d.open_segment(i, &mut buf)?;
            assert_eq!(Decryptor::segment_plain_offset(i), plain.len() as u64);
            plain.extend_from_slice(&buf);
        }
        assert_eq!(plain.len() as u64, d.plaintext_len());
        Ok(plain)
    }

    #[test]
    fn round_trip_edge_sizes_and_chunkings() {
        for len in [
            0,
            1,
            SEGMENT_SIZE - 1,
            SEGMENT_SIZE,
            SEGMENT_SIZE + 1,
            2 * SEGMENT_SIZE,
            3 * SEGMENT_SIZE + 5,
        ] {
            let plain = pattern(len);
            for chunk in [1, 7, SEGMENT_SIZE - 1, usize::MAX] {
                if chunk == 1 && len > 2 * SEGMENT_SIZE {
                    continue; // byte-at-a-time over 3 segments adds time, not coverage
                }
                let ct = encrypt(&plain, chunk.min(len.max(1)));
                assert_eq!(ct.len() as u64, encrypted_len(len as u64), "len {len}");
                assert_eq!(decrypt(&ct).unwrap(), plain, "len {len} chunk {chunk}");
            }
        }
    }

    /// Out-of-place opening gives the plaintext in-place opening gives, segment by segment
    /// (full and short last segments); an altered byte, a segment given under another index,
    /// a wrong length or too short an output fail, and the output is zeroed.
    #[test]
    fn out_of_place_opening_matches_in_place_and_refuses_what_it_should() {
        let key = Key32::from_bytes(KEY);
        let plain = pattern(2 * SEGMENT_SIZE + 777);
        let ct = encrypt(&plain, usize::MAX);
        let d = Decryptor::new(&key, &ct[..HEADER_LEN], ct.len() as u64, &ID).unwrap();
        assert_eq!(d.segment_count(), 3);
        let sealed = |i: u64| {
            let (off, len) = d.segment_location(i).unwrap();
            &ct[off as usize..off as usize + len]
        };
        let mut got = Vec::new();
        for i in 0..3 {
            // Room to spare: only the plaintext's length is written.
            let mut out = vec![0xa5u8; SEGMENT_CIPHER_LEN + 10];
            let n = d.open_segment_to(i, sealed(i), &mut out).unwrap();
            assert!(out[n..].iter().all(|&b| b == 0xa5));
            let mut inplace = sealed(i).to_vec();
            let m = d.open_segment_in_place(i, &mut inplace).unwrap();
            assert_eq!(&out[..n], &inplace[..m], "segment {i}");
            got.extend_from_slice(&out[..n]);
        }
        assert_eq!(got, plain);

        let mut out = vec![0xa5u8; SEGMENT_SIZE];
        let mut altered = sealed(1).to_vec();
        altered[100] ^= 1;
        assert_eq!(
            d.open_segment_to(1, &altered, &mut out),
            Err(FormatError::Decrypt)
        );
        assert!(out.iter().all(|&b| b == 0), "output zeroed after a failure");
        out.fill(0xa5);
        // Segment 0's bytes offered as segment 1 (same length, other nonce).
        assert_eq!(
            d.open_segment_to(1, sealed(0), &mut out),
            Err(FormatError::Decrypt)
        );
        assert!(out.iter().all(|&b| b == 0));
        // A wrong length, too short an output, an index past the end.
        assert_eq!(
            d.open_segment_to(0, &sealed(0)[1..], &mut out),
            Err(FormatError::Decrypt)
        );
        let mut short = vec![0u8; SEGMENT_SIZE - 1];
        assert_eq!(
            d.open_segment_to(0, sealed(0), &mut short),
            Err(FormatError::Decrypt)
        );
        assert_eq!(
            d.open_segment_to(3, sealed(2), &mut out),
            Err(FormatError::Range)
        );
    }

    /// The in-place API gives the same bytes as `update`/`finish` at every edge size, and
    /// refuses wrong segment lengths and a mix with buffered `update` input.
    #[test]
    fn in_place_sealing_matches_update() {
        let key = Key32::from_bytes(KEY);
        for len in [
            0,
            1,
            SEGMENT_SIZE - 1,
            SEGMENT_SIZE,
            SEGMENT_SIZE + 1,
            3 * SEGMENT_SIZE + 5,
        ] {
            let plain = pattern(len);
            let mut want = Vec::new();
            let mut enc = Encryptor::with_salt(&key, ID, [9; 32]);
            enc.update(&plain, &mut want);
            enc.finish(&mut want).unwrap();

            let mut enc = Encryptor::with_salt(&key, ID, [9; 32]);
            let mut got = Vec::new();
            let mut segs = plain.chunks(SEGMENT_SIZE).peekable();
            let mut last = Vec::new();
            while let Some(seg) = segs.next() {
                let mut buf = seg.to_vec();
                if segs.peek().is_none() {
                    last = buf;
                    break;
                }
                enc.seal_in_place(&mut buf).unwrap();
                got.extend_from_slice(&buf);
            }
            enc.finish_in_place(&mut last).unwrap();
            got.extend_from_slice(&last);
            assert_eq!(got, want, "len {len}");
            let mut ct = Encryptor::with_salt(&key, ID, [9; 32]).header().to_vec();
            ct.extend_from_slice(&got);
            assert_eq!(decrypt(&ct).unwrap(), plain, "len {len}");
        }

        let mut enc = Encryptor::new(&key, ID);
        let mut short = pattern(SEGMENT_SIZE - 1);
        assert_eq!(enc.seal_in_place(&mut short), Err(FormatError::Length));
        assert_eq!(
            short,
            pattern(SEGMENT_SIZE - 1),
            "a refused segment is left as it was"
        );
        let mut long = pattern(SEGMENT_SIZE + 1);
        assert_eq!(
            Encryptor::new(&key, ID).finish_in_place(&mut long),
            Err(FormatError::Length)
        );
        // An empty last segment after a full one would be a different, wrong content.
        let mut full = pattern(SEGMENT_SIZE);
        enc.seal_in_place(&mut full).unwrap();
        assert_eq!(
            enc.finish_in_place(&mut Vec::new()),
            Err(FormatError::Length)
        );
        // The same through `finish`, with nothing buffered: refused, nothing written.
        let mut enc = Encryptor::new(&key, ID);
        let mut full = pattern(SEGMENT_SIZE);
        enc.seal_in_place(&mut full).unwrap();
        let mut out = Vec::new();
        assert_eq!(enc.finish(&mut out), Err(FormatError::Length));
        assert!(out.is_empty());
        // Buffered `update` input and an in-place segment do not mix...
        let mut enc = Encryptor::new(&key, ID);
        enc.update(&[1, 2, 3], &mut Vec::new());
        let mut seg = pattern(SEGMENT_SIZE);
        assert_eq!(enc.seal_in_place(&mut seg), Err(FormatError::Length));
        // ...but `finish_in_place` with an empty buffer seals what `update` buffered.
        let mut tail = Vec::new();
        enc.finish_in_place(&mut tail).unwrap();
        assert_eq!(tail.len(), 3 + TAG_LEN);
    }

    #[test]
    fn chunking_does_not_change_the_bytes() {
        let plain = pattern(2 * SEGMENT_SIZE + 3);
        let key = Key32::from_bytes(KEY);
        let run = |chunk: usize| {
            let mut enc = Encryptor::with_salt(&key, ID, [5; 32]);
            let mut out = Vec::new();
            for c in plain.chunks(chunk) {
                enc.update(c, &mut out);
            }
            enc.update(&[], &mut out);
            enc.finish(&mut out).unwrap();
            out
        };
        let whole = run(plain.len());
        for chunk in [1000, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE] {
            assert_eq!(run(chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn empty_content_is_one_tag() {
        let ct = encrypt(&[], 1);
        assert_eq!(ct.len(), HEADER_LEN + TAG_LEN);
        let d = Decryptor::new(&Key32::from_bytes(KEY), &ct[..HEADER_LEN], 72, &ID).unwrap();
        assert_eq!((d.plaintext_len(), d.segment_count()), (0, 1));
        assert_eq!(d.segments_for(0, 10), 0..0);
        assert_eq!(decrypt(&ct).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn length_formulas() {
        let cases: &[(u64, u64)] = &[
            (0, 72),
            (1, 73),
            (SEG - 1, 56 + SEG - 1 + 16),
            (SEG, 56 + SEG + 16),
            (SEG + 1, 56 + SEG + 1 + 32),
            (2 * SEG, 56 + 2 * SEG + 32),
            (3 * SEG + 5, 56 + 3 * SEG + 5 + 64),
        ];
        for &(p, e) in cases {
            assert_eq!(encrypted_len(p), e, "plain {p}");
            assert_eq!(plaintext_len(e), Ok(p), "enc {e}");
        }
        // Impossible lengths: shorter than header + tag, a last segment shorter than a tag,
        // or an empty last segment after full ones.
        for e in [
            0,
            1,
            56,
            71,
            56 + SEG_CT + 1,
            56 + SEG_CT + 15,
            56 + SEG_CT + 16,
        ] {
            assert_eq!(plaintext_len(e), Err(FormatError::Length), "enc {e}");
        }
        assert_eq!(checked_encrypted_len(u64::MAX), None);
        assert_eq!(encrypted_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn plaintext_len_inverts_encrypted_len_everywhere_near_boundaries() {
        for k in 0..4u64 {
            for d in 0..40u64 {
                for p in [k * SEG + d, (k * SEG).saturating_sub(d)] {
                    assert_eq!(plaintext_len(encrypted_len(p)), Ok(p));
                }
            }
        }
        // Every ciphertext length is either the image of exactly one plaintext length or invalid.
        for e in 0..(HDR + 2 * SEG_CT + 40) {
            if let Ok(p) = plaintext_len(e) {
                assert_eq!(encrypted_len(p), e);
            }
        }
    }

    #[test]
    fn header_fields_are_checked() {
        let ct = encrypt(b"hello", 5);
        let key = Key32::from_bytes(KEY);
        let n = ct.len() as u64;
        assert_eq!(header_blob_id(&ct[..HEADER_LEN]), Ok(ID));
        for (at, msg) in [
            (0, "bad magic: not an EFS content"),
            (3, "bad magic: not an EFS content"),
            (4, "unsupported format version"),
            (5, "unsupported cipher suite"),
            (6, "unsupported segment size"),
            (7, "reserved byte is not zero"),
        ] {
            let mut h = ct[..HEADER_LEN].to_vec();
            h[at] ^= 0x02;
            assert_eq!(
                Decryptor::new(&key, &h, n, &ID).unwrap_err(),
                FormatError::Header(msg)
            );
        }
        assert!(matches!(
            Decryptor::new(&key, &ct[..HEADER_LEN - 1], n, &ID),
            Err(FormatError::Header(_))
        ));
        assert!(matches!(
            Decryptor::new(&key, &ct[..HEADER_LEN + 1], n, &ID),
            Err(FormatError::Header(_))
        ));
        assert_eq!(&ct[..8], b"EFSc\x01\x01\x10\x00");
    }

    #[test]
    fn locations_and_ranges() {
        let ct = encrypt(&pattern(2 * SEGMENT_SIZE + 10), SEGMENT_SIZE);
        let d = Decryptor::new(
            &Key32::from_bytes(KEY),
            &ct[..HEADER_LEN],
            ct.len() as u64,
            &ID,
        )
        .unwrap();
        assert_eq!(d.segment_count(), 3);
        assert_eq!(d.segment_location(0), Ok((56, SEGMENT_CIPHER_LEN)));
        assert_eq!(d.segment_location(1), Ok((56 + SEG_CT, SEGMENT_CIPHER_LEN)));
        assert_eq!(d.segment_location(2), Ok((56 + 2 * SEG_CT, 26)));
        assert_eq!(d.segment_location(3), Err(FormatError::Range));
        let mut buf = vec![0u8; 26];
        assert_eq!(d.open_segment(3, &mut buf), Err(FormatError::Range));
        assert_eq!(d.segments_for(0, 1), 0..1);
        assert_eq!(d.segments_for(SEG - 1, SEG + 1), 0..2);
        assert_eq!(d.segments_for(SEG, 2 * SEG), 1..2);
        assert_eq!(d.segments_for(5, u64::MAX), 0..3);
        assert_eq!(d.segments_for(2 * SEG + 9, u64::MAX), 2..3);
        assert_eq!(d.segments_for(2 * SEG + 10, u64::MAX), 0..0);
        assert_eq!(d.segments_for(7, 7), 0..0);
        assert_eq!(d.segments_for(9, 3), 0..0);
        assert_eq!(Decryptor::segment_plain_offset(2), 2 * SEG);
    }

    #[test]
    fn wrong_buffer_length_fails_and_clears() {
        let ct = encrypt(b"abc", 3);
        let d = Decryptor::new(
            &Key32::from_bytes(KEY),
            &ct[..HEADER_LEN],
            ct.len() as u64,
            &ID,
        )
        .unwrap();
        let mut buf = ct[HEADER_LEN..ct.len() - 1].to_vec();
        assert_eq!(d.open_segment(0, &mut buf), Err(FormatError::Decrypt));
        assert!(buf.is_empty());
        let mut buf = ct[HEADER_LEN..].to_vec();
        buf[0] ^= 1;
        assert_eq!(d.open_segment(0, &mut buf), Err(FormatError::Decrypt));
        assert!(buf.is_empty());
    }

    #[test]
    fn nonces_differ_by_index_and_last_flag() {
        let h = Encryptor::new(&Key32::from_bytes(KEY), ID).header();
        let ck = ContentKey::derive(&Key32::from_bytes(KEY), &h);
        let n = |i, last| *ck.nonce(i, last).as_ref();
        let all = [
            n(0, false),
            n(0, true),
            n(1, false),
            n(1, true),
            n(u64::MAX, true),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // nonce(0, false) is the nonce base itself.
        assert_eq!(&n(0, false), &*ck.nonce_base);
    }

    #[test]
    fn debug_does_not_leak() {
        let key = Key32::from_bytes(KEY);
        let e = Encryptor::new(&key, ID);
        let s = format!("{e:?}");
        assert!(s.starts_with("Encryptor"), "{s}");
        let d = Decryptor::new(&key, &e.header(), 72, &ID).unwrap();
        assert!(format!("{d:?}").starts_with("Decryptor"));
    }
}
