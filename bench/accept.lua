-- wrk script of bench/accept.py: one POST per request, each a new message.
--
--   wrk ... -s bench/accept.lua URL -- ROUTE RUN SESSIONS TOKEN APP_SECRET
--
-- ROUTE is api (POST /api/message), chat (POST /v1/chat/completions, X-Claw-Timeout: 0.001)
-- or whatsapp (a WhatsApp Cloud API notification to /webhooks/whatsapp/, signed as Meta
-- signs it: X-Hub-Signature-256 = sha256= hex HMAC-SHA256 of the body under the app secret,
-- computed per request through LuaJIT's FFI and libcrypto, because each notification
-- carries its own wamid: the ingress drops a repeated one as a platform retry, which would
-- make every request after the first a cheap duplicate). RUN makes the ids unique per
-- measurement; messages go round SESSIONS sessions (chats). done() prints one JSON line.

local ffi = require("ffi")

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local route, run, sessions, token, secret
local n = 0
local crypto, md, md_len

local function hmac_sha256_hex(key, data)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, data, #data, md, md_len)
  local out = {}
  for i = 0, 31 do
    out[i + 1] = string.format("%02x", md[i])
  end
  return table.concat(out)
end

local function load_crypto()
  ffi.cdef([[
    typedef struct evp_md_st EVP_MD;
    const EVP_MD *EVP_sha256(void);
    unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                        const unsigned char *d, size_t n, unsigned char *md,
                        unsigned int *md_len);
  ]])
  local ok, lib = pcall(ffi.load, "crypto")
  if not ok then
    lib = ffi.load("libcrypto.so.3")
  end
  crypto = lib
  md = ffi.new("unsigned char[32]")
  md_len = ffi.new("unsigned int[1]")
end

function init(args)
  route, run, sessions, token, secret = args[1], args[2], tonumber(args[3]), args[4], args[5]
  if route == "whatsapp" then
    load_crypto()
  end
end

local TEXT = "hello, this is message %s of the accept benchmark: how are you today?"
local WHATSAPP = '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398",'
  .. '"changes":[{"value":{"messaging_product":"whatsapp","metadata":{'
  .. '"display_phone_number":"15550783881","phone_number_id":"106540352242922"},'
  .. '"contacts":[{"profile":{"name":"Bench User %d"},"wa_id":"%s"}],'
  .. '"messages":[{"from":"%s","id":"wamid.HBgL%s","timestamp":"%d","type":"text",'
  .. '"text":{"body":"%s"}}]},"field":"messages"}]}]}'

function request()
  n = n + 1
  local id = string.format("%s-%d-%d", run, tid, n)
  local k = (n * 7 + tid) % sessions
  local text = string.format(TEXT, id)
  if route == "api" then
    local body = string.format('{"text":"%s","session":"api:bench-%d"}', text, k)
    return wrk.format("POST", "/api/message", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
    }, body)
  elseif route == "chat" then
    local body = string.format('{"model":"clawfleet","messages":[{"role":"system",'
      .. '"content":"You are a helpful assistant."},{"role":"user","content":"%s"}],'
      .. '"user":"bench-%d"}', text, k)
    return wrk.format("POST", "/v1/chat/completions", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
      ["X-Claw-Timeout"] = "0.001",
    }, body)
  else
    local sender = string.format("1555000%04d", k)
    local body = string.format(WHATSAPP, k, sender, sender, id, os.time(), text)
    return wrk.format("POST", "/webhooks/whatsapp/", {
      ["Content-Type"] = "application/json",
      ["X-Hub-Signature-256"] = "sha256=" .. hmac_sha256_hex(secret, body),
    }, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'ACCEPT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
