// voxmesh demo client: WHIP over fetch, one PeerConnection, a data channel for
// transcripts and latency. No framework, so the whole flow is readable here.
"use strict";

const $ = (s) => document.querySelector(s);
const logEl = $("#log");
const state = { pc: null, location: null, agentBubbles: {}, interimEl: null, stream: null, audioStats: { peak: 0, frames: 0 } };
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
    case "agent_say": {
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
      setStatus("the server asked us to reconnect");
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
  (function tick() {
    an.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const v of buf) peak = Math.max(peak, Math.abs(v));
    state.audioStats.peak = Math.max(state.audioStats.peak, peak);
    if (peak > 0.01) state.audioStats.frames++;
    bar.style.width = Math.min(100, peak * 300) + "%";
    if (state.pc) requestAnimationFrame(tick);
  })();
}

async function start() {
  setStatus("asking for the microphone…");
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
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
  pc.onconnectionstatechange = () => setStatus(pc.connectionState);
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  setStatus("connecting…");
  const res = await fetch("/v1/sessions", { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
  if (res.status !== 201) throw new Error(`${res.status}: ${await res.text()}`);
  state.location = res.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  $("#talk").textContent = "Hang up";
  $("#talk").classList.add("live");
}

async function stop() {
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
  (state.pc ? stop() : start()).catch((e) => { setStatus("failed: " + e.message); stop(); });
});
