//! The host's imports as safe functions over byte slices, with the ABI's raw results (negative
//! = an `ERR_*` code). On wasm32 they call module `machinomy`; on every other target the mock
//! host ([`crate::mock`]) answers with the same rules, so the safe API above this layer runs the
//! same code in a plugin's native tests as in the hub.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::mock::host::*;

#[cfg(target_arch = "wasm32")]
pub(crate) use self::wasm::*;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod wasm {
    /// The imports, exactly as `abi.rs` lists them.
    mod sys {
        #[link(wasm_import_module = "machinomy")]
        extern "C" {
            pub(super) fn log(level: i32, ptr: i32, len: i32);
            pub(super) fn publish(
                topic_ptr: i32,
                topic_len: i32,
                payload_ptr: i32,
                payload_len: i32,
                retain: i32,
            ) -> i32;
            pub(super) fn subscribe(filter_ptr: i32, filter_len: i32) -> i32;
            pub(super) fn unsubscribe(filter_ptr: i32, filter_len: i32) -> i32;
            pub(super) fn set_timer(delay_ms: i64, repeat: i32) -> i64;
            pub(super) fn cancel_timer(timer: i64) -> i32;
            pub(super) fn now() -> i64;
            pub(super) fn kv_get(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32;
            pub(super) fn kv_set(key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32) -> i32;
            pub(super) fn kv_delete(key_ptr: i32, key_len: i32) -> i32;
            pub(super) fn device_state(device_ptr: i32, device_len: i32, out_ptr: i32, out_cap: i32) -> i32;
            pub(super) fn config(out_ptr: i32, out_cap: i32) -> i32;
            pub(super) fn spend(
                payee_ptr: i32,
                payee_len: i32,
                amount_ptr: i32,
                amount_len: i32,
                memo_ptr: i32,
                memo_len: i32,
            ) -> i64;
            pub(super) fn call_service(
                service_ptr: i32,
                service_len: i32,
                body_ptr: i32,
                body_len: i32,
                max_price_ptr: i32,
                max_price_len: i32,
            ) -> i64;
            pub(super) fn invoice(
                peer_ptr: i32,
                peer_len: i32,
                amount_ptr: i32,
                amount_len: i32,
                memo_ptr: i32,
                memo_len: i32,
            ) -> i64;
            pub(super) fn stream_tick(
                payee_ptr: i32,
                payee_len: i32,
                price_ptr: i32,
                price_len: i32,
                memo_ptr: i32,
                memo_len: i32,
            ) -> i64;
            pub(super) fn respond(call: i64, ok: i32, body_ptr: i32, body_len: i32) -> i32;
        }
    }

    // wasm32 addresses and lengths are 32-bit; the ABI passes them as i32 (the host reads them
    // as unsigned). The casts below only reinterpret.
    fn ptr(bytes: &[u8]) -> i32 {
        bytes.as_ptr() as usize as i32
    }

    fn len(bytes: &[u8]) -> i32 {
        bytes.len() as i32
    }

    fn out_ptr(out: &mut [u8]) -> i32 {
        out.as_mut_ptr() as usize as i32
    }

    // SAFETY (every block below): the pointers come from live slices of this module's memory
    // with their exact lengths, the host reads at most `len` bytes from each and writes at most
    // `out.len()` bytes into `out`; it keeps no pointer after returning.

    pub(crate) fn log(level: i32, message: &[u8]) {
        unsafe { sys::log(level, ptr(message), len(message)) }
    }

    pub(crate) fn publish(topic: &[u8], payload: &[u8], retain: bool) -> i32 {
        unsafe { sys::publish(ptr(topic), len(topic), ptr(payload), len(payload), i32::from(retain)) }
    }

    pub(crate) fn subscribe(filter: &[u8]) -> i32 {
        unsafe { sys::subscribe(ptr(filter), len(filter)) }
    }

    pub(crate) fn unsubscribe(filter: &[u8]) -> i32 {
        unsafe { sys::unsubscribe(ptr(filter), len(filter)) }
    }

    pub(crate) fn set_timer(delay_ms: i64, repeat: bool) -> i64 {
        unsafe { sys::set_timer(delay_ms, i32::from(repeat)) }
    }

    pub(crate) fn cancel_timer(timer: i64) -> i32 {
        unsafe { sys::cancel_timer(timer) }
    }

    pub(crate) fn now() -> i64 {
        unsafe { sys::now() }
    }

    pub(crate) fn kv_get(key: &[u8], out: &mut [u8]) -> i32 {
        unsafe { sys::kv_get(ptr(key), len(key), out_ptr(out), out.len() as i32) }
    }

    pub(crate) fn kv_set(key: &[u8], value: &[u8]) -> i32 {
        unsafe { sys::kv_set(ptr(key), len(key), ptr(value), len(value)) }
    }

    pub(crate) fn kv_delete(key: &[u8]) -> i32 {
        unsafe { sys::kv_delete(ptr(key), len(key)) }
    }

    pub(crate) fn device_state(device: &[u8], out: &mut [u8]) -> i32 {
        unsafe { sys::device_state(ptr(device), len(device), out_ptr(out), out.len() as i32) }
    }

    pub(crate) fn config(out: &mut [u8]) -> i32 {
        unsafe { sys::config(out_ptr(out), out.len() as i32) }
    }

    pub(crate) fn spend(payee: &[u8], amount: &[u8], memo: &[u8]) -> i64 {
        unsafe { sys::spend(ptr(payee), len(payee), ptr(amount), len(amount), ptr(memo), len(memo)) }
    }

    pub(crate) fn call_service(service: &[u8], body: &[u8], max_price: &[u8]) -> i64 {
        unsafe { sys::call_service(ptr(service), len(service), ptr(body), len(body), ptr(max_price), len(max_price)) }
    }

    pub(crate) fn invoice(peer: &[u8], amount: &[u8], memo: &[u8]) -> i64 {
        unsafe { sys::invoice(ptr(peer), len(peer), ptr(amount), len(amount), ptr(memo), len(memo)) }
    }

    pub(crate) fn stream_tick(payee: &[u8], price: &[u8], memo: &[u8]) -> i64 {
        unsafe { sys::stream_tick(ptr(payee), len(payee), ptr(price), len(price), ptr(memo), len(memo)) }
    }

    pub(crate) fn respond(call: i64, ok: bool, body: &[u8]) -> i32 {
        unsafe { sys::respond(call, i32::from(ok), ptr(body), len(body)) }
    }
}
