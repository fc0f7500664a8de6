//! `kumo.dkim`: KumoMTA's DKIM signer constructors. The signer they return
//! is given to `msg:dkim_sign(signer)`; see `crate::dkim` for the signing
//! and the cache that makes calling a constructor per message cheap.

use super::kumo::from_table;
use crate::dkim::{Algorithm, Signer, SignerParams};
use mlua::{Lua, Table, UserData, Value};
use std::sync::Arc;

/// A signer as Lua holds it.
pub struct LuaSigner(pub Arc<Signer>);

impl UserData for LuaSigner {}

fn constructor(lua: &Lua, alg: Algorithm) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, params: Value| {
        let what = alg.constructor();
        let params: SignerParams = from_table(lua, what, params)?;
        let signer = Signer::get(alg, params).map_err(|e| super::located_error(lua, e))?;
        Ok(LuaSigner(signer))
    })
}

/// Add `kumo.dkim` to `kumo`.
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let dkim = lua.create_table()?;
    dkim.set("rsa_sha256_signer", constructor(lua, Algorithm::RsaSha256)?)?;
    dkim.set(
        "ed25519_signer",
        constructor(lua, Algorithm::Ed25519Sha256)?,
    )?;
    // KumoMTA can move signing to a pool of this many threads; by default
    // it signs on the calling thread, as Sluice always does (one signature
    // is well under a millisecond), so the setting is accepted and unused
    dkim.set(
        "set_signing_threads",
        lua.create_function(|_, _threads: usize| Ok(()))?,
    )?;
    kumo.set("dkim", dkim)
}
