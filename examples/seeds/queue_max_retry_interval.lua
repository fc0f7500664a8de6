-- Verbatim from KumoMTA's make_queue_config page (seed 001): max_retry_interval.
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    -- Retry at most every hour
    max_retry_interval = '1 hour',
  }
end)
