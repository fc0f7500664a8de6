-- sluice-mta's embedded default policy, used when no --policy is given:
-- accept mail from loopback for any domain on 127.0.0.1:2525 and deliver it
-- into a maildir under ./sluice-data/, with logs and spool beside it.
local kumo = require 'kumo'

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = './sluice-data/spool' }
  kumo.define_spool { name = 'meta', path = './sluice-data/spool' }
  kumo.configure_local_logs { log_dir = './sluice-data/logs' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2525',
    relay_hosts = { '127.0.0.0/8', '::1' },
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 minute',
    protocol = { maildir_path = './sluice-data/maildir' },
  }
end)
