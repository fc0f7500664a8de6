-- The MTA pod's policy, installed by the sluice Helm chart. Read it, do not
-- edit it in the pod: change the chart's values instead.
--
-- * sluice-settings.lua: spool, logs and listeners from the chart's values.
-- * sluice-generated.lua: queue config, egress pools and paths rendered by
--   sluice-operator from QueuePolicy, EgressPool and EgressPath objects. It
--   appears once the operator has written its ConfigMap; the MTA reloads
--   when it does and whenever it changes.
-- * your own modules (mta.userPolicy): custom_lua constructors and event
--   handlers, required last.
local kumo = require 'kumo'
local settings = require 'sluice-settings'

kumo.on('init', function()
  if settings.dns then
    kumo.dns.configure_resolver(settings.dns)
  end
  kumo.define_spool { name = 'data', path = settings.spool_dir }
  kumo.define_spool { name = 'meta', path = settings.spool_dir }
  if settings.log_dir then
    kumo.configure_local_logs {
      log_dir = settings.log_dir,
      max_file_size = settings.log_max_file_size,
    }
  end
  for _, listener in ipairs(settings.listeners) do
    kumo.start_esmtp_listener(listener)
  end
  kumo.start_http_listener(settings.http_listener)
end)

-- Present when the operator has rendered its ConfigMap (the volume source is
-- optional, so pods start before the operator's first write).
if package.searchpath('sluice-generated', package.path) then
  require 'sluice-generated'
end

for _, module in ipairs(settings.modules) do
  require(module)
end
