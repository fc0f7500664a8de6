-- Argo CD health check for QueuePolicy, EgressPool, EgressPath and
-- DkimSigner (sluice.dev/v1alpha1), from the conditions the operator writes:
--   Healthy      Ready=True: accepted, and every MTA pod runs the config
--   Degraded     Accepted=False: left out of the policy, with the reason;
--                or KeyReady=False: a DkimSigner's key cannot be used
--   Progressing  anything else: not yet observed, rolling out, no MTA pods
local hs = { status = "Progressing", message = "Waiting for sluice-operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for sluice-operator to observe generation " .. generation
  return hs
end
local accepted, ready, key
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Accepted" then
    accepted = c
  elseif c.type == "Ready" then
    ready = c
  elseif c.type == "KeyReady" then
    key = c
  end
end
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = (accepted.reason or "Rejected") .. ": " .. (accepted.message or "")
  return hs
end
if key ~= nil and key.status == "False" then
  hs.status = "Degraded"
  hs.message = (key.reason or "KeyNotReady") .. ": " .. (key.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Config " .. string.sub(obj.status.configHash or "", 1, 12)
    .. " runs on " .. (obj.status.pods or "every") .. " MTA pods"
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
