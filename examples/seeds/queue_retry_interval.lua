-- Verbatim from KumoMTA's make_queue_config page (seed 001): retry_interval.
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '20 minutes',
  }
end)
