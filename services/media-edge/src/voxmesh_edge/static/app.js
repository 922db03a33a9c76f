// voxmesh demo client: WHIP over fetch, one PeerConnection, a data channel for
// transcripts and latency. No framework, so the whole flow is readable here.
//
// Reconnect: the edge gives every session a resume token (response header
// X-Voxmesh-Resume-Token, and the data channel's `session` event). When the
// PeerConnection fails, or a draining edge says `move`, we open a new
// PeerConnection with the same microphone and POST it with the token
// (X-Voxmesh-Resume): any edge attaches it to the same conversation, and the
// agent goes on with the whole history.
"use strict";

const $ = (s) => document.querySelector(s);
const logEl = $("#log");
const state = {
  pc: null, location: null, agentBubbles: {}, saidClauses: {}, interimEl: null, stream: null,
  audioStats: { peak: 0, frames: 0 }, token: null, live: false, reconnecting: false, reconnects: 0,
  disconnectTimer: null, meterOn: false,
};
window.voxmesh = state; // for tests and the curious

function setStatus(text) { $("#status").textContent = text; }

function bubble(cls, text) {
  const el = document.createElement("div");
  el.className = "msg " + cls;
  el.textContent = text;
  logEl.appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function onEvent(ev) {
  switch (ev.type) {
    case "interim":
      if (!state.interimEl) state.interimEl = bubble("user interim", "");
      state.interimEl.textContent = ev.text;
      break;
    case "user_turn":
      if (state.interimEl) state.interimEl.remove();
      state.interimEl = null;
      bubble("user", ev.text);
      break;
    case "session":
      state.sessionId = ev.session_id;
      if (ev.resume_token) state.token = ev.resume_token;
      break;
    case "agent_say": {
      // After a reconnect the agent may say again a clause not heard whole: show it once.
      const said = (state.saidClauses[ev.turn_id] = state.saidClauses[ev.turn_id] || new Set());
      if (said.has(ev.clause_id)) break;
      said.add(ev.clause_id);
      let el = state.agentBubbles[ev.turn_id];
      if (!el) el = state.agentBubbles[ev.turn_id] = bubble("agent", "");
      el.textContent = (el.textContent + " " + ev.text).trim();
      break;
    }
    case "latency": {
      const el = state.agentBubbles[ev.turn_id];
      const tag = document.createElement("span");
      tag.className = "lat";
      tag.textContent = `first audio ${ev.ttfa_ms} ms`;
      (el || logEl).appendChild(tag);
      break;
    }
    case "interrupted": {
      const el = state.agentBubbles[ev.turn_id];
      if (el) el.classList.add("cut");
      break;
    }
    case "move":
      setStatus("the server asked us to move; reconnecting…");
      reconnect("move");
      break;
    case "error":
      setStatus("error: " + ev.message);
      break;
  }
}

function waitForIce(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 2000); // gathering can stall on odd networks; send what we have
  });
}

function meter(stream) {
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  const an = ctx.createAnalyser();
  an.fftSize = 512;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  const bar = $("#meter > div");
  if (state.meterOn) return;
  state.meterOn = true;
  (function tick() {
    an.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const v of buf) peak = Math.max(peak, Math.abs(v));
    state.audioStats.peak = Math.max(state.audioStats.peak, peak);
    if (peak > 0.01) state.audioStats.frames++;
    bar.style.width = Math.min(100, peak * 300) + "%";
    if (state.live) requestAnimationFrame(tick);
    else state.meterOn = false;
  })();
}

// One PeerConnection for the conversation: a new one, or (with a token) the
// same conversation again after a lost connection.
async function connect(token) {
  const pc = (state.pc = new RTCPeerConnection());
  state.stream.getAudioTracks().forEach((t) => pc.addTransceiver(t, { direction: "sendrecv" }));
  const dc = pc.createDataChannel("events");
  dc.onmessage = (m) => onEvent(JSON.parse(m.data));
  pc.ontrack = (e) => {
    const audio = $("#remote");
    audio.srcObject = e.streams[0] || new MediaStream([e.track]);
    audio.play().catch(() => {});
    meter(audio.srcObject); // WebAudio sees remote audio only while an <audio> element plays it
  };
  pc.onconnectionstatechange = () => {
    if (pc !== state.pc) return; // an old connection winding down
    setStatus(pc.connectionState);
    clearTimeout(state.disconnectTimer);
    if (pc.connectionState === "failed") reconnect("failed");
    // "disconnected" may heal by itself (a network blip); if it does not within 3 s, move.
    if (pc.connectionState === "disconnected") state.disconnectTimer = setTimeout(() => reconnect("disconnected"), 3000);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  const headers = { "Content-Type": "application/sdp" };
  if (token) headers["X-Voxmesh-Resume"] = token;
  const res = await fetch("/v1/sessions", { method: "POST", headers, body: pc.localDescription.sdp });
  if (res.status !== 201) {
    pc.close();
    const err = new Error(`${res.status}: ${await res.text()}`);
    err.status = res.status;
    throw err;
  }
  state.location = res.headers.get("Location");
  state.token = res.headers.get("X-Voxmesh-Resume-Token") || state.token;
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
}

async function reconnect(why) {
  if (!state.live || state.reconnecting || !state.token) return;
  state.reconnecting = true;
  const old = state.pc;
  state.pc = null;
  if (old) old.close(); // the microphone track lives on: it goes to the new connection
  let delay = 250;
  try {
    while (state.live) {
      setStatus(`reconnecting (${why})…`);
      try {
        await connect(state.token);
        state.reconnects++;
        setStatus("reconnected");
        return;
      } catch (e) {
        if (e.status === 403) { // foreign or stale token: this conversation cannot come back
          setStatus("cannot resume: " + e.message);
          await stop();
          return;
        }
      }
      await new Promise((r) => setTimeout(r, delay + Math.random() * delay)); // backoff with jitter
      delay = Math.min(delay * 2, 4000);
    }
  } finally {
    state.reconnecting = false;
  }
}

async function start() {
  setStatus("asking for the microphone…");
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  state.live = true;
  state.token = null;
  setStatus("connecting…");
  await connect(null);
  $("#talk").textContent = "Hang up";
  $("#talk").classList.add("live");
}

async function stop() {
  state.live = false;
  clearTimeout(state.disconnectTimer);
  if (state.location) fetch(state.location, { method: "DELETE" }).catch(() => {});
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.pc) state.pc.close();
  state.pc = null;
  state.location = null;
  $("#talk").textContent = "Talk";
  $("#talk").classList.remove("live");
  setStatus("idle");
}

$("#talk").addEventListener("click", () => {
  (state.live ? stop() : start()).catch((e) => { setStatus("failed: " + e.message); stop(); });
});
