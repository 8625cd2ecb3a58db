//! The [`Plugin`] trait and the [`export_plugin!`](crate::export_plugin) macro that turns a type
//! into the module's exports.

use crate::money::{RequestId, SpendStatus};
use crate::service::{self, CallId};
use crate::timer::TimerId;

/// A plugin: the hub calls these methods when something happens. Every method has a default that
/// does nothing (and [`Plugin::on_service_call`] answers an error), so implement only what the
/// plugin needs.
///
/// The value lives as long as the wasm instance. The host may throw the instance away after a
/// fault and start a fresh one from `Default` **without** calling `on_start` again (kv,
/// subscriptions and timers are kept), so anything that must survive belongs in
/// [`kv`](crate::kv), and fields should only cache what can be read again.
pub trait Plugin {
    /// A run begins: the hub started, or the plugin was enabled or upgraded. The run starts with
    /// no subscriptions and no timers, so subscribe and set timers here every time; read the
    /// config and the devices' current states ([`device::state`](crate::device::state)) here too.
    fn on_start(&mut self) {}

    /// An MQTT message arrived on `topic`, which matches one of the plugin's subscriptions.
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let _ = (topic, payload);
    }

    /// A timer set with [`timer::set`](crate::timer::set) fired.
    fn on_timer(&mut self, timer: TimerId) {
        let _ = timer;
    }

    /// The outcome of a money request ([`money`](crate::money)). `detail` is the service's answer
    /// for a paid `call_service`, the approval id for `Pending`, the reason for `Denied` and
    /// `Failed`, and empty otherwise.
    fn on_spend_result(&mut self, request: RequestId, status: SpendStatus, detail: &[u8]) {
        let _ = (request, status, detail);
    }

    /// A peer (`from`, its public key in hex) bought `service` with `body` as its request. Answer
    /// with [`service::respond`], now or later. The default answers an error, so a buyer is never
    /// left waiting on a plugin that sells nothing.
    fn on_service_call(&mut self, call: CallId, service: &str, body: &[u8], from: &str) {
        let _ = (body, from);
        let message = format!("this plugin does not sell {service}");
        if let Err(e) = service::respond(call, Err(&message)) {
            crate::warn!("could not answer call {call}: {e}");
        }
    }
}

/// Exports a [`Plugin`] type (which must also implement `Default`) as the module's
/// `machinomy_abi_version`, `machinomy_alloc` and `on_*` functions. Use it once, at the crate's
/// top level:
///
/// ```
/// #[derive(Default)]
/// struct Hello;
///
/// impl machinomy_sdk::Plugin for Hello {
///     fn on_start(&mut self) {
///         machinomy_sdk::log::info("hello");
///     }
/// }
///
/// machinomy_sdk::export_plugin!(Hello);
/// ```
///
/// On wasm32 the plugin value is created with `Default` on the first event and kept in a
/// static. The expansion allows `unsafe_code` locally, so a plugin crate may `deny` it but not
/// `forbid` it. On other targets the macro only checks the type, and tests call the trait methods
/// directly against the mock host (module `mock`).
///
/// Event buffers follow the ABI: one allocation per event, freed after the handler returns. A
/// message whose topic is not UTF-8 is ignored (with a warning; MQTT topics are UTF-8, so a
/// correct host never sends one); a service call whose service name or caller is not UTF-8 is
/// answered with an error without calling the plugin; a spend status the SDK does not know is
/// logged and ignored.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Every target: the type must be a plugin that can start from Default.
        const _: fn() = || {
            fn must_be_a_plugin<P: $crate::Plugin + ::core::default::Default>() {}
            must_be_a_plugin::<$plugin>();
        };

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            static PLUGIN: $crate::__rt::Slot<$plugin> = $crate::__rt::Slot::new();

            #[no_mangle]
            pub extern "C" fn machinomy_abi_version() -> i32 {
                $crate::abi::ABI_VERSION
            }

            #[no_mangle]
            pub extern "C" fn machinomy_alloc(size: i32) -> i32 {
                $crate::__rt::alloc(size)
            }

            #[no_mangle]
            pub extern "C" fn on_start() {
                PLUGIN.with(|plugin| $crate::Plugin::on_start(plugin))
            }

            #[no_mangle]
            pub extern "C" fn on_message(topic_ptr: i32, topic_len: i32, payload_ptr: i32, payload_len: i32) {
                // SAFETY: the host calls this export with one buffer it got from machinomy_alloc,
                // as the ABI says.
                PLUGIN.with(|plugin| unsafe {
                    $crate::__rt::on_message(plugin, topic_ptr, topic_len, payload_ptr, payload_len)
                })
            }

            #[no_mangle]
            pub extern "C" fn on_timer(timer: i64) {
                PLUGIN.with(|plugin| $crate::Plugin::on_timer(plugin, $crate::TimerId(timer)))
            }

            #[no_mangle]
            pub extern "C" fn on_spend_result(request: i64, status: i32, detail_ptr: i32, detail_len: i32) {
                // SAFETY: as on_message.
                PLUGIN.with(|plugin| unsafe {
                    $crate::__rt::on_spend_result(plugin, request, status, detail_ptr, detail_len)
                })
            }

            #[no_mangle]
            pub extern "C" fn on_service_call(
                call: i64,
                service_ptr: i32,
                service_len: i32,
                body_ptr: i32,
                body_len: i32,
                from_ptr: i32,
                from_len: i32,
            ) {
                // SAFETY: as on_message.
                PLUGIN.with(|plugin| unsafe {
                    $crate::__rt::on_service_call(
                        plugin,
                        call,
                        [(service_ptr, service_len), (body_ptr, body_len), (from_ptr, from_len)],
                    )
                })
            }
        };
    };
}

/// Where an event's byte arguments lie, as the ABI lays them out: one buffer of `total` bytes
/// starting at the first pointer, every argument inside it. Pure arithmetic, tested natively;
/// the wasm runtime below frees the buffer it describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct EventLayout {
    start: usize,
    total: usize,
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl EventLayout {
    /// The layout of `args` (pointer, length pairs in argument order), if they are consistent:
    /// every argument inside `[first pointer, first pointer + Σ lengths)`, and a non-null start
    /// when there are bytes at all. Pointers are wasm32 addresses, so read as `u32`.
    fn of(args: &[(i32, i32)]) -> Option<EventLayout> {
        let start = args.first().map_or(0, |&(ptr, _)| ptr as u32 as usize);
        let mut total: usize = 0;
        for &(_, len) in args {
            total = total.checked_add(usize::try_from(len).ok()?)?;
        }
        let layout = EventLayout { start, total };
        let consistent = args.iter().all(|&arg| layout.range(arg).is_some()) && (total == 0 || start != 0);
        if consistent {
            Some(layout)
        } else {
            None
        }
    }

    /// The address range `(pointer, length)` of an argument, if it lies inside the buffer (and
    /// inside the 4 GiB a wasm32 memory can have). Computed in `u64`, the same on every target.
    fn range(&self, (ptr, len): (i32, i32)) -> Option<(usize, usize)> {
        const ADDRESS_SPACE: u64 = 1 << 32;
        let (ptr, len) = (u64::from(ptr as u32), u64::try_from(len).ok()?);
        let (start, total) = (self.start as u64, self.total as u64);
        let inside = len == 0 || (ptr >= start && ptr + len <= start + total && start + total <= ADDRESS_SPACE);
        if inside {
            Some((usize::try_from(ptr).ok()?, usize::try_from(len).ok()?))
        } else {
            None
        }
    }
}

/// A panic's report as one log line: `panicked at …` (the wording differs between Rust
/// versions), its lines joined.
pub(crate) fn panic_line(report: &str) -> String {
    let line = report.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    if line.starts_with("panicked") {
        line
    } else {
        format!("panicked: {line}")
    }
}

/// What [`export_plugin!`](crate::export_plugin) expands to calls; not for direct use.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub mod __rt {
    use core::cell::UnsafeCell;
    use std::alloc::{alloc as allocate, dealloc, Layout};

    use super::EventLayout;
    use crate::{CallId, Plugin, RequestId, SpendStatus};

    /// The plugin value of a module, created on first use.
    pub struct Slot<T>(UnsafeCell<Option<T>>);

    impl<T> core::fmt::Debug for Slot<T> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Slot")
        }
    }

    impl<T> Default for Slot<T> {
        fn default() -> Slot<T> {
            Slot::new()
        }
    }

    // SAFETY: wasm32-unknown-unknown without the atomics feature has one thread, so the static
    // is never shared between threads.
    #[cfg(not(target_feature = "atomics"))]
    unsafe impl<T> Sync for Slot<T> {}

    impl<T> Slot<T> {
        /// An empty slot.
        pub const fn new() -> Slot<T> {
            Slot(UnsafeCell::new(None))
        }
    }

    impl<T: Default> Slot<T> {
        /// Runs `f` on the plugin value, creating it first if needed (in a fresh instance, so
        /// that is also when panics start being logged).
        pub fn with(&self, f: impl FnOnce(&mut T)) {
            // SAFETY: exports run one at a time and the host never calls an export from inside
            // an import, so this is the only reference to the value while `f` runs.
            let slot = unsafe { &mut *self.0.get() };
            if slot.is_none() {
                log_panics();
            }
            f(slot.get_or_insert_with(T::default))
        }
    }

    /// Makes a panic log its message and place as an error before it traps, so the owner sees
    /// why the plugin faulted (`plugin show`), not only that it reached `unreachable`.
    fn log_panics() {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&super::panic_line(&info.to_string()));
        }));
    }

    /// `machinomy_alloc`: `size` bytes, alignment 1, for the host to write an event's arguments.
    pub fn alloc(size: i32) -> i32 {
        let size = match usize::try_from(size) {
            Ok(size) if size > 0 => size,
            _ => return 0,
        };
        match Layout::from_size_align(size, 1) {
            // SAFETY: the layout's size is not zero.
            Ok(layout) => unsafe { allocate(layout) as usize as i32 },
            Err(_) => 0,
        }
    }

    /// One event's buffer: the allocation the host made with `machinomy_alloc(total)`, holding
    /// the arguments one after the other. Freed on drop.
    struct EventBuffer(EventLayout);

    impl EventBuffer {
        /// Takes ownership of the allocation that holds `args` (pointer, length pairs in argument
        /// order). `None` (and nothing freed: leaking is safer than freeing a wrong pointer) if
        /// the arguments are not laid out as the ABI says.
        ///
        /// # Safety
        /// The host made the allocation with `machinomy_alloc(total)`, `total` being the sum of
        /// the lengths, wrote the arguments into it, and the first pointer is its start (or every
        /// pointer is 0 when `total` is 0), as the ABI says.
        unsafe fn take(args: &[(i32, i32)]) -> Option<EventBuffer> {
            EventLayout::of(args).map(EventBuffer)
        }

        /// One argument (empty if it is not inside the buffer).
        fn arg(&self, arg: (i32, i32)) -> &[u8] {
            match self.0.range(arg) {
                // SAFETY: the range lies inside the live allocation `take` was promised, which
                // the host wrote and nothing else touches until `self` drops.
                Some((ptr, len)) if len > 0 => unsafe { core::slice::from_raw_parts(ptr as *const u8, len) },
                _ => &[],
            }
        }
    }

    impl Drop for EventBuffer {
        fn drop(&mut self) {
            if self.0.total > 0 {
                if let Ok(layout) = Layout::from_size_align(self.0.total, 1) {
                    // SAFETY: `take` checked this is the allocation machinomy_alloc made with
                    // this size and alignment; nothing refers to it after the handler returned.
                    unsafe { dealloc(self.0.start as *mut u8, layout) }
                }
            }
        }
    }

    fn bad_buffer(export: &str) {
        crate::log::error(&format!("{export}: the host passed arguments outside their buffer; event ignored"));
    }

    /// # Safety
    /// See `EventBuffer::take`: the host passed one buffer made with `machinomy_alloc`.
    pub unsafe fn on_message<T: Plugin>(
        plugin: &mut T,
        topic_ptr: i32,
        topic_len: i32,
        payload_ptr: i32,
        payload_len: i32,
    ) {
        let (topic, payload) = ((topic_ptr, topic_len), (payload_ptr, payload_len));
        // SAFETY: passed on from the caller.
        let buffer = match unsafe { EventBuffer::take(&[topic, payload]) } {
            Some(buffer) => buffer,
            None => return bad_buffer("on_message"),
        };
        match core::str::from_utf8(buffer.arg(topic)) {
            Ok(topic_text) => plugin.on_message(topic_text, buffer.arg(payload)),
            Err(_) => crate::log::warn("ignored a message whose topic is not UTF-8"),
        }
    }

    /// # Safety
    /// See `EventBuffer::take`: the host passed one buffer made with `machinomy_alloc`.
    pub unsafe fn on_spend_result<T: Plugin>(
        plugin: &mut T,
        request: i64,
        status: i32,
        detail_ptr: i32,
        detail_len: i32,
    ) {
        let detail = (detail_ptr, detail_len);
        // SAFETY: passed on from the caller.
        let buffer = match unsafe { EventBuffer::take(&[detail]) } {
            Some(buffer) => buffer,
            None => return bad_buffer("on_spend_result"),
        };
        match SpendStatus::from_code(status) {
            Some(status) => plugin.on_spend_result(RequestId(request), status, buffer.arg(detail)),
            None => crate::warn!("ignored request {request}'s unknown status {status}"),
        }
    }

    /// # Safety
    /// See `EventBuffer::take`: the host passed one buffer made with `machinomy_alloc`.
    pub unsafe fn on_service_call<T: Plugin>(plugin: &mut T, call: i64, args: [(i32, i32); 3]) {
        let [service, body, from] = args;
        // SAFETY: passed on from the caller.
        let buffer = match unsafe { EventBuffer::take(&args) } {
            Some(buffer) => buffer,
            None => return bad_buffer("on_service_call"),
        };
        let call = CallId(call);
        match (core::str::from_utf8(buffer.arg(service)), core::str::from_utf8(buffer.arg(from))) {
            (Ok(service), Ok(from)) => plugin.on_service_call(call, service, buffer.arg(body), from),
            _ => {
                let _ = crate::service::respond(call, Err("malformed call"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventLayout;

    #[test]
    fn event_arguments_lie_one_after_the_other_in_one_buffer() {
        // topic (5 bytes) then payload (3 bytes) at 1000.
        let layout = EventLayout::of(&[(1000, 5), (1005, 3)]).unwrap();
        assert_eq!(layout, EventLayout { start: 1000, total: 8 });
        assert_eq!(layout.range((1005, 3)), Some((1005, 3)));
        // An empty first argument still starts the buffer; empty ones may point anywhere.
        assert_eq!(EventLayout::of(&[(64, 0), (64, 4), (0, 0)]), Some(EventLayout { start: 64, total: 4 }));
        // No bytes: every pointer 0, nothing to free.
        assert_eq!(EventLayout::of(&[(0, 0)]), Some(EventLayout { start: 0, total: 0 }));
        assert_eq!(EventLayout::of(&[]), Some(EventLayout { start: 0, total: 0 }));
        // Addresses above 2 GiB arrive as negative i32s.
        assert_eq!(EventLayout::of(&[(i32::MIN, 2)]), Some(EventLayout { start: 0x8000_0000, total: 2 }));
    }

    #[test]
    fn a_panic_is_one_log_line() {
        // Rust 1.73 and later.
        assert_eq!(
            super::panic_line("panicked at src/lib.rs:12:9:\nindex out of bounds: the len is 0 but the index is 999"),
            "panicked at src/lib.rs:12:9: index out of bounds: the len is 0 but the index is 999"
        );
        // Rust 1.63.
        assert_eq!(
            super::panic_line("panicked at 'no config', src/lib.rs:3:5"),
            "panicked at 'no config', src/lib.rs:3:5"
        );
        assert_eq!(super::panic_line("something else"), "panicked: something else");
    }

    #[test]
    fn inconsistent_arguments_are_refused() {
        assert_eq!(EventLayout::of(&[(1000, 5), (2000, 3)]), None, "outside the buffer");
        assert_eq!(EventLayout::of(&[(1000, 5), (999, 3)]), None, "before the buffer");
        assert_eq!(EventLayout::of(&[(1000, 5), (1006, 5)]), None, "past the end");
        assert_eq!(EventLayout::of(&[(1000, -1)]), None, "negative length");
        assert_eq!(EventLayout::of(&[(0, 4)]), None, "bytes at address 0");
        assert_eq!(EventLayout::of(&[(-1, 4)]), None, "wraps around the address space");
    }
}
