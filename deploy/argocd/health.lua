-- Argo CD health of the cyclr.com kinds (CyclrPartner, CyclrAccount, CyclrConnectorInstall,
-- CyclrCycle),
-- read from the kstatus conditions the operator writes: Ready, Reconciling, Stalled and
-- status.observedGeneration. Argo CD runs it with Lua 5.1; `obj` is the resource.
--   Suspended    Ready has reason Paused (annotation cyclr.com/paused: "true")
--   Progressing  no status yet, status of an older generation, or Reconciling=True
--   Degraded     Stalled=True: fix the spec (the message says what)
--   Healthy      Ready=True
local hs = {status = "Progressing", message = "Waiting for the operator to report the latest spec"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local ready, reconciling, stalled
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Reconciling" then
    reconciling = c
  elseif c.type == "Stalled" then
    stalled = c
  end
end
-- A paused resource is not reconciled, so its observedGeneration may lag on purpose.
if ready ~= nil and ready.reason == "Paused" then
  return {status = "Suspended", message = ready.message}
end
if obj.status.observedGeneration ~= obj.metadata.generation then
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = stalled.message}
end
if reconciling ~= nil and reconciling.status == "True" then
  return {status = "Progressing", message = reconciling.message}
end
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = ready.message}
end
if ready ~= nil then
  hs.message = ready.message
end
return hs
