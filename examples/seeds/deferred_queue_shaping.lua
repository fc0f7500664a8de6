-- Verbatim from KumoMTA's deferred_queue page (seed 004): shaping the
-- deferred-inject queue via Lua.
kumo.on(
  'get_egress_path_config',
  function(routing_domain, egress_source, site_name)
    if routing_domain == 'deferred_smtp_inject.kumomta.internal' then
      return kumo.make_egress_path {
        connection_limit = kumo.available_parallelism(),
        refresh_strategy = 'Epoch',
        max_ready = 80000,
      }
    end
    -- do the rest of your shaping configuration here
  end
)
