-- KumoMTA's "Routing Messages via AMQP" page (seed 002), with only the fixes
-- the copied page needs:
--  * the closing lines the copy lost are restored (`},` `},` `}` `end` after
--    the queue config; `}` after the publish table; `return 'OK'`/`end` after
--    the status check; `end)` closing both handlers);
--  * the page's constructor used `message`, which is not in scope there: the
--    publish moves into the connection object's `send(message)`, as
--    KumoMTA's current AMQP page has it;
--  * the broker URL is `AMQP_URL` when the includer sets it (tests point it
--    at their own broker), else the page's 'amqp://localhost'.
local AMQP_URL = AMQP_URL or 'amqp://localhost'

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'amqp' then
    -- Use the `make.webhook` event to handle delivery
    -- of webhook log records
    return kumo.make_queue_config {
      protocol = {
        custom_lua = {
          -- this will cause an event called `make.webhook` to trigger.
          -- You can pick any name for this event, so long as it doesn't
          -- collide with a pre-defined event, and so long as you bind
          -- to it with a kumo.on call
          constructor = 'make.amqp',
        },
      },
    }
  end
  return kumo.make_queue_config {}
end)

-- This is a user-defined event that matches up to the custom_lua
-- constructor used in `get_queue_config` below.
-- It returns a lua connection object that can be used to "send"
-- messages to their destination.
kumo.on('make.amqp', function(domain, tenant, campaign)
  local client = kumo.amqp.build_client(AMQP_URL)
  local connection = {}
  function connection:send(message)
    local confirm = client:publish {
      routing_key = 'logging',
      payload = message:get_data(),
    }
    local result = confirm:wait()

    if result.status == 'Ack' or result.status == 'NotRequested' then
      return 'OK'
    end
    -- result.status must be `Nack`; log the full result
    kumo.reject(500, kumo.json_encode(result))
  end
  return connection
end)
