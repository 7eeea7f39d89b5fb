// The memory game page: the server builds the sequence and scores; the page shows each image for
// image_ms, then a blank gap_ms, records a key press or tap with performance.now(), and sends
// one response per trial before it gets the next image. The session token is kept in
// sessionStorage, so a reload resumes the session.
"use strict";
(() => {
  const params = new URLSearchParams(window.location.search);
  const participant = params.get("PROLIFIC_PID") || params.get("workerId") || params.get("participant");
  const platform = params.get("PROLIFIC_PID") ? "prolific" : (params.get("workerId") ? "mturk" : "direct");
  const studyKey = params.get("STUDY_ID") || params.get("assignmentId");
  const sessionKey = params.get("SESSION_ID") || params.get("hitId");
  const storageKey = "neuromem-game:" + (participant || "");
  const $ = (id) => document.getElementById(id);
  let timing = null, responded = false, onset = 0, rt = null, current = null;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function api(path, body) {
    const response = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) { throw new Error(payload.error || ("HTTP " + response.status)); }
    return payload;
  }

  function preload(src) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error("cannot load " + src));
      image.src = src;
    });
  }

  function respond() {
    if (!current || responded) { return; }
    responded = true;
    rt = performance.now() - onset;
    $("frame").classList.add("flash");
  }

  async function play(trial) {
    const picture = $("picture");
    while (!trial.done) {
      current = trial;
      await preload(trial.image);           // loaded before onset: honest timing
      picture.src = trial.image;
      responded = false; rt = null;
      $("frame").classList.remove("flash");
      picture.style.visibility = "visible";
      onset = performance.now();
      $("progress").textContent = (trial.position + 1) + " / " + trial.total;
      await sleep(timing.image_ms);
      picture.style.visibility = "hidden";
      await sleep(timing.gap_ms);
      trial = await api("/api/response", {
        token: sessionStorage.getItem(storageKey), position: trial.position,
        responded: responded, rt_ms: responded ? rt : null});
    }
    current = null;   // the token stays: a reload of the last page shows the code again
    $("intro").hidden = true;
    $("stage").hidden = true;
    $("done").hidden = false;
    $("code").textContent = trial.completion_code;
  }

  async function start() {
    $("error").textContent = "";
    try {
      let token = sessionStorage.getItem(storageKey);
      if (!token) {
        if (!participant) { throw new Error("this link has no participant id"); }
        const session = await api("/api/session", {participant: participant, platform: platform,
          study_key: studyKey, session_key: sessionKey});
        token = session.token;
        sessionStorage.setItem(storageKey, token);
        sessionStorage.setItem(storageKey + ":timing", JSON.stringify(session));
      }
      timing = JSON.parse(sessionStorage.getItem(storageKey + ":timing"));
      $("intro").hidden = true;
      $("stage").hidden = false;
      await play(await api("/api/next?token=" + encodeURIComponent(token)));
    } catch (error) {
      $("intro").hidden = false;
      $("stage").hidden = true;
      $("error").textContent = error.message;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.code === "Space") { event.preventDefault(); respond(); }
  });
  $("frame").addEventListener("pointerdown", respond);
  $("start").addEventListener("click", start);
  if (sessionStorage.getItem(storageKey)) { start(); }   // a reload resumes
})();
