//! Records taken from librdkafka many at a time.
//!
//! rdkafka's `BaseConsumer::poll` hands out one record per call through
//! librdkafka's event API: a queue lock, an event object, two clock reads and
//! an `Arc` per record. At a million records a second that was most of the
//! polling thread. [`GroupConsumer::poll_batch`](crate::GroupConsumer::poll_batch)
//! instead takes up to a [`Batch`]'s capacity in one
//! `rd_kafka_consume_batch_queue` call on a queue that only fetched records
//! are forwarded to; the records are read in place through [`Record`], which
//! implements rdkafka's [`Message`] trait, and freed when the batch is
//! cleared or dropped.

use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rdkafka::bindings as rdsys;
use rdkafka::message::{Header, Headers, Message, Timestamp};

/// Records owned by the caller until the next [`Batch::clear`].
pub struct Batch {
    msgs: Vec<*mut rdsys::rd_kafka_message_t>,
    capacity: usize,
}

// SAFETY: the messages are owned by the batch alone (librdkafka hands them
// over in `rd_kafka_consume_batch_queue`) and may be read and destroyed from
// any thread.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch that takes at most `capacity` records per poll.
    pub fn with_capacity(capacity: usize) -> Batch {
        let capacity = capacity.max(1);
        Batch {
            msgs: Vec::with_capacity(capacity),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The poll filled the batch: more records are probably waiting.
    pub fn is_full(&self) -> bool {
        self.msgs.len() == self.capacity
    }

    /// The records in the order librdkafka delivered them (per partition in
    /// offset order).
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.msgs.iter().map(|&m| Record {
            // SAFETY: only non-null pointers are kept (see `fill`).
            ptr: unsafe { NonNull::new_unchecked(m) },
            _batch: PhantomData,
        })
    }

    /// Frees the records.
    pub fn clear(&mut self) {
        for m in self.msgs.drain(..) {
            // SAFETY: each message was handed to us once and is freed once.
            unsafe { rdsys::rd_kafka_message_destroy(m) };
        }
    }

    /// Takes what `queue` holds, up to the capacity; when it holds nothing,
    /// waits up to `timeout_ms` for the first record (or a yield). A batch
    /// that is not full then takes what came 1 ms later: a consumer faster
    /// than its producer otherwise spun through batches of a few records,
    /// each paying the per-batch work, and took CPU from the producer on the
    /// same cores. The batch must be empty.
    ///
    /// (`rd_kafka_consume_batch_queue` returns early only once it has as
    /// many records as asked for, so the wait for the first asks for one.)
    ///
    /// # Safety
    /// `queue` must be a live queue handle of a live client.
    pub(crate) unsafe fn fill(&mut self, queue: *mut rdsys::rd_kafka_queue_t, timeout_ms: i32) {
        debug_assert!(self.msgs.is_empty());
        // SAFETY (every `take` here): the caller vouches for `queue`.
        unsafe { self.take(queue, 0, self.capacity) };
        if self.msgs.is_empty() {
            if timeout_ms == 0 {
                return;
            }
            unsafe { self.take(queue, timeout_ms, 1) };
            if self.msgs.is_empty() {
                return;
            }
        }
        if !self.is_full() {
            // Sleeping, not waiting on the queue: a wait with a timeout wakes
            // for every record the fetcher adds, one at a time.
            std::thread::sleep(std::time::Duration::from_millis(1));
            unsafe { self.take(queue, 0, self.capacity - self.msgs.len()) };
        }
    }

    /// Appends up to `max` records, waiting up to `timeout_ms` for all of them.
    unsafe fn take(&mut self, queue: *mut rdsys::rd_kafka_queue_t, timeout_ms: i32, max: usize) {
        let have = self.msgs.len();
        let max = max.min(self.capacity - have);
        if max == 0 {
            return;
        }
        // SAFETY: the caller vouches for `queue`; the spare capacity from
        // `have` holds `max` pointers, and librdkafka wrote the first `n`.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                queue,
                timeout_ms,
                self.msgs.as_mut_ptr().add(have),
                max,
            )
        };
        if n > 0 {
            unsafe { self.msgs.set_len(have + n as usize) };
            self.msgs.retain(|m| !m.is_null());
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One record of a [`Batch`], read in place.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    ptr: NonNull<rdsys::rd_kafka_message_t>,
    _batch: PhantomData<&'a Batch>,
}

impl Record<'_> {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: the message lives until the batch is cleared, which needs
        // `&mut Batch` while this record borrows it.
        unsafe { self.ptr.as_ref() }
    }

    /// A consumer error delivered in place of a record (the record fields
    /// are then meaningless).
    pub fn error(&self) -> Option<String> {
        let err = self.raw().err;
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: rd_kafka_message_errstr returns a string owned by the
        // message (or a static one).
        let s = unsafe { rdsys::rd_kafka_message_errstr(self.ptr.as_ptr()) };
        Some(if s.is_null() {
            format!("{err:?}")
        } else {
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        })
    }
}

fn slice<'a>(p: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: librdkafka's (pointer, length) pairs describe owned bytes.
        Some(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    }
}

impl Message for Record<'_> {
    type Headers = RecordHeaders;

    fn key(&self) -> Option<&[u8]> {
        slice(self.raw().key, self.raw().key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        slice(self.raw().payload, self.raw().len)
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: the caller holds the only reference to this message; its
        // (payload, len) describe bytes it owns.
        let m = unsafe { self.ptr.as_mut() };
        if m.payload.is_null() {
            None
        } else {
            Some(unsafe { std::slice::from_raw_parts_mut(m.payload as *mut u8, m.len) })
        }
    }

    fn topic(&self) -> &str {
        // SAFETY: a fetched message always has its topic handle.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.raw().rkt)) }
            .to_str()
            .unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message and a valid out-pointer.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.ptr.as_ptr(), &mut kind) };
        match kind {
            _ if ts == -1 => Timestamp::NotAvailable,
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ts)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ts)
            }
            _ => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&RecordHeaders> {
        let mut h = ptr::null_mut();
        // SAFETY: a live message; the header list it returns is owned by the
        // message and lives as long as it does.
        let err = unsafe { rdsys::rd_kafka_message_headers(self.ptr.as_ptr(), &mut h) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || h.is_null() {
            return None;
        }
        // SAFETY: `RecordHeaders` is a zero-sized stand-in whose address is
        // the header list; a reference to a ZST at any non-null address is valid.
        Some(unsafe { &*(h as *const RecordHeaders) })
    }
}

/// The header list of a [`Record`]; its address is librdkafka's
/// `rd_kafka_headers_t`.
pub struct RecordHeaders {
    _opaque: [u8; 0],
}

impl RecordHeaders {
    fn native(&self) -> *const rdsys::rd_kafka_headers_t {
        self as *const RecordHeaders as *const rdsys::rd_kafka_headers_t
    }
}

impl RecordHeaders {
    /// The value of the last header called `name` (`Some(&[])` for a header
    /// without a value), compared by librdkafka: cheaper than walking the
    /// list with [`Headers::try_get`], which turns every name into a `&str`.
    pub fn get_last(&self, name: &CStr) -> Option<&[u8]> {
        let mut value = ptr::null();
        let mut size = 0;
        // SAFETY: `self` is a live header list (see `Record::headers`); the
        // value it points to is owned by it.
        let err = unsafe {
            rdsys::rd_kafka_header_get_last(self.native(), name.as_ptr(), &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        Some(slice(value, size).unwrap_or(&[]))
    }
}

impl logpipe_wire::HeaderLookup for RecordHeaders {
    fn count(&self) -> usize {
        Headers::count(self)
    }
    fn last(&self, _: &str, c_name: &CStr) -> Option<&[u8]> {
        self.get_last(c_name)
    }
}

impl Headers for RecordHeaders {
    fn count(&self) -> usize {
        // SAFETY: `self` is a live header list (see `Record::headers`).
        unsafe { rdsys::rd_kafka_header_cnt(self.native()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let mut name: *const c_char = ptr::null();
        let mut value = ptr::null();
        let mut size = 0;
        // SAFETY: a live header list and valid out-pointers.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(self.native(), idx, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        Some(Header {
            // SAFETY: header names are NUL-terminated and owned by the list.
            key: unsafe { CStr::from_ptr(name) }.to_str().unwrap_or(""),
            value: slice(value, size),
        })
    }
}
