// Generated from src/index.ts by build.mjs (node:module stripTypeScriptTypes). Do not edit.
// Hearth's OpenClaw plugin: people answer and decide in chat, and nothing goes through a model.
//
//   /hearth status | approve T-12 [#seq] | reject T-12 [reason…] | answer T-12 text… | submit <project> <prd>
//   Approve / Reject buttons on approval cards (callback "hearth:<approve|reject|answer>:<task>:<seq>")
//   a reply that quotes a Hearth question ("[task T-12 #7] Question …") answers it
//
// Every call goes to the Hearth sidecar with the PLUGIN token (rights: read, submit, answer, decide)
// and passes `who` = the channel user id and `channel`, so the sidecar can enforce the project's
// approvers. The token is read from `tokenFile` on each call and never echoed into the chat.
// Types are local and minimal (the SDK's are not needed at run time); build.mjs strips them.
import { readFileSync } from "node:fs";
import { definePluginEntry } from "openclaw/plugin-sdk/plugin-entry";

// Slack: a message in a thread arrives with replyToId = the thread's ts (the task's first message).

const USAGE = [
  "Hearth commands:",
  "/hearth status: tasks waiting for you, and what runs",
  "/hearth status T-12: one task: its state, what it waits for",
  "/hearth tasks: every task that is not finished",
  "/hearth approve T-12: approve the checkpoint T-12 waits on",
  "/hearth approve T-12 merge: approve the final checkpoint and merge the branch (or keep, or push)",
  "/hearth reject T-12 <reason>: reject it; the step is rolled back and redone with your reason",
  "/hearth answer T-12 <text>: answer T-12's question (or reply to the question message)",
  "/hearth submit <project> <prd path>: queue a PRD of a project Hearth knows",
].join("\n");
const TAG = /\[task (T-\d+) #(\d+)\] (Question|Checkpoint)/;
const NAMESPACE = "hearth";
const TASK_ID = /^T-\d+$/;

function token(cfg              )         {
  if (cfg.tokenFile) return readFileSync(cfg.tokenFile, "utf8").trim();
  return (cfg.token ?? "").trim();
}

async function sidecar(cfg              , method        , path        , body          )                        {
  const base = (cfg.sidecarUrl ?? "").replace(/\/+$/, "");
  let res                      ;
  // A second try after a network error ("fetch failed": e.g. the sidecar closed an idle keep-alive
  // connection as this request reused it). Safe: answers and decisions are idempotent per ask.
  for (let attempt = 0; res === undefined; attempt++) {
    try {
      res = await fetch(`${base}${path}`, {
        method,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token(cfg)}` },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(cfg.timeoutMs ?? 15000),
      });
    } catch (err) {
      if (attempt === 0 && (err         ).name === "TypeError") continue;
      return { status: 0, body: null, detail: `Hearth is unreachable (${(err         ).name})` };
    }
  }
  const text = await res.text();
  let parsed      = null;
  try { parsed = JSON.parse(text); } catch { parsed = null; }
  const detail = typeof parsed?.detail === "string" ? parsed.detail : text.slice(0, 300);
  return { status: res.status, body: parsed, detail };
}

const FINISHES = ["keep", "merge", "push"];

function failure(r              )         {
  if (r.status === 0) return r.detail;
  if (r.status === 401) return "Hearth refused the plugin's token (check tokenFile in the plugin config).";
  return r.detail || `Hearth answered ${r.status}`;
}

async function decide(cfg              , taskId        , approve         , reason        , who        ,
                      channel        , checkpoint         , finish         )                                         {
  const r = await sidecar(cfg, "POST", `/v1/tasks/${encodeURIComponent(taskId)}/decision`, {
    decision: approve ? "approve" : "reject", reason, who, channel,
    ...(checkpoint === undefined ? {} : { checkpoint }),
    ...(finish === undefined ? {} : { finish }),
  });
  if (r.status !== 200) return { ok: false, text: failure(r) };
  const verb = approve ? "approved" : "rejected";
  if (r.body?.duplicate) return { ok: true, text: `${taskId} was already ${verb} by ${r.body.reply?.who ?? "someone"}.` };
  const redo = approve ? "" : " The step is rolled back and redone" + (reason ? ` with: ${reason}` : ".");
  const then = finish ? ` The branch will be: ${finish === "keep" ? "kept" : finish === "merge" ? "merged" : "pushed"}.` : "";
  return { ok: true, text: `${taskId} ${verb} by ${who}.${redo}${then}` };
}

async function answer(cfg              , taskId        , text        , who        , channel        ,
                      question         )                                         {
  if (!text.trim()) return { ok: false, text: `Say what to answer: /hearth answer ${taskId} <text>` };
  const r = await sidecar(cfg, "POST", `/v1/tasks/${encodeURIComponent(taskId)}/answer`, {
    text, who, channel, ...(question === undefined ? {} : { question }),
  });
  if (r.status !== 200) return { ok: false, text: failure(r) };
  if (r.body?.duplicate) return { ok: true, text: `That answer for ${taskId} was already recorded.` };
  return { ok: true, text: `Answer for ${taskId} recorded; the task resumes.` };
}

async function status(cfg              )                  {
  const waiting = await sidecar(cfg, "GET", "/v1/approvals");
  if (waiting.status !== 200) return failure(waiting);
  const tasks = await sidecar(cfg, "GET", "/v1/tasks");
  const lines           = [];
  for (const t of waiting.body         ) {
    const p = t.pending ?? {};
    if (p.kind === "question") lines.push(`${t.id} (${t.project}) asks: ${p.question}`);
    else if (p.kind === "approval") lines.push(`${t.id} (${t.project}) awaits approval of ${p.step_id} (commit ${String(p.commit).slice(0, 10)})`);
    else lines.push(`${t.id} (${t.project}) is ${t.state}`);
  }
  const active = tasks.status === 200
    ? (tasks.body         ).filter((t) => ["queued", "placed", "running", "yielding"].includes(t.state))
    : [];
  if (!lines.length && !active.length) return "Hearth: nothing is queued, running or waiting.";
  const head = lines.length ? [`Waiting for you (${lines.length}):`, ...lines] : ["Nothing waits for you."];
  const run = active.length ? [`Queued or running (${active.length}):`,
    ...active.slice(0, 15).map((t) => `${t.id} (${t.project}) ${t.state}: ${t.name}`)] : [];
  return [...head, ...run].join("\n");
}

async function oneTask(cfg              , taskId        )                  {
  const r = await sidecar(cfg, "GET", `/v1/tasks/${encodeURIComponent(taskId)}`);
  if (r.status === 404) return `There is no task ${taskId}.`;
  if (r.status !== 200) return failure(r);
  const t = r.body;
  const steps = t.spec?.plan?.steps?.length ?? "?";
  const lines = [`${t.id} (${t.project}: ${t.name}) is ${t.state}; step ${Math.min(t.next_step + 1, steps)} of ${steps}.`];
  const waiting = await sidecar(cfg, "GET", "/v1/approvals");
  const mine = waiting.status === 200 ? (waiting.body         ).find((w) => w.id === t.id) : undefined;
  const p = mine?.pending;
  if (p?.kind === "question") lines.push(`It asks: ${p.question}`);
  if (p?.kind === "approval") lines.push(`It awaits approval of ${p.step_id} (commit ${String(p.commit).slice(0, 10)}).`);
  if (t.message) lines.push(String(t.message).slice(0, 300));
  return lines.join("\n");
}

async function listTasks(cfg              )                  {
  const r = await sidecar(cfg, "GET", "/v1/tasks");
  if (r.status !== 200) return failure(r);
  const open = (r.body         ).filter((t) => !["completed", "failed", "cancelled"].includes(t.state));
  if (!open.length) return "Hearth: no task is queued, running or waiting.";
  return [`Tasks (${open.length}):`, ...open.slice(0, 30).map((t) => `${t.id} (${t.project}) ${t.state}: ${t.name}`)].join("\n");
}

// OpenClaw lower-cases some Slack sender ids; Slack's own (U…, W…) are upper case, as approvers list them.
const slackUser = (id         )         => String(id ?? "").toUpperCase();

async function command(cfg              , ctx                )                 {
  const args = (ctx.args ?? "").trim();
  const [verb = "", ...rest] = args.split(/\s+/);
  const isSlack = ctx.channel === "slack" || ctx.channelId === "slack";
  const channel = isSlack ? "slack" : String(ctx.channelId ?? ctx.channel ?? "");
  const who = isSlack ? slackUser(ctx.senderId) : String(ctx.senderId ?? "");
  const sub = verb.toLowerCase();
  if (sub === "status" && rest[0]) {
    const taskId = rest[0].toUpperCase();
    if (!TASK_ID.test(taskId)) return { text: `"${rest[0]}" is not a task id; try /hearth status T-12` };
    return { text: await oneTask(cfg, taskId) };
  }
  if (sub === "status") return { text: await status(cfg) };
  if (sub === "tasks") return { text: await listTasks(cfg) };
  if (sub === "approve" || sub === "reject" || sub === "answer") {
    const taskId = (rest.shift() ?? "").toUpperCase();
    if (!TASK_ID.test(taskId)) return { text: `Which task? /hearth ${sub} T-12 …` };
    let seq                    ;
    if (rest[0] && /^#\d+$/.test(rest[0])) seq = Number(rest.shift() .slice(1));
    // "/hearth approve T-12 merge": approve the final checkpoint and merge (or keep, or push) the branch
    const finish = sub === "approve" && FINISHES.includes((rest[0] ?? "").toLowerCase())
      ? rest.shift() .toLowerCase() : undefined;
    const text = rest.join(" ");
    const r = sub === "answer"
      ? await answer(cfg, taskId, text, who, channel, seq)
      : await decide(cfg, taskId, sub === "approve", text, who, channel, seq, finish);
    return { text: r.text };
  }
  if (sub === "submit") {
    const [project, prd] = rest;
    if (!project || !prd) return { text: "Usage: /hearth submit <project> <prd path>" };
    const body = project.includes("/") ? { project_path: project, prd_path: prd } : { project, prd_path: prd };
    const r = await sidecar(cfg, "POST", "/v1/tasks", body);
    if (r.status !== 201) return { text: `Not submitted: ${failure(r)}` };
    return { text: `Submitted ${r.body.id} (${r.body.project}: ${r.body.name}), ${r.body.spec?.plan?.steps?.length ?? "?"} step(s), priority ${r.body.priority}.` };
  }
  return { text: USAGE };
}

async function clicked(cfg              , ctx                    , channel        )                                {
  const payload = ctx.callback?.payload ?? ctx.interaction?.payload ?? "";
  const original = ctx.callback?.messageText ?? ctx.interaction?.messageText ?? "";
  const [action, taskId, seqText] = payload.split(":");
  const who = String(ctx.senderId ?? ctx.userId ?? ctx.user?.id ?? "");
  const say = async (text        ) => { await ctx.respond?.reply?.({ text }); };
  if (!TASK_ID.test(taskId ?? "")) return { handled: false };
  if (ctx.auth && ctx.auth.isAuthorizedSender === false) {
    await say(`${who} is not allowed to act on Hearth tasks from this chat.`);
    return { handled: true };
  }
  const seq = seqText && /^\d+$/.test(seqText) ? Number(seqText) : undefined;
  if (action === "answer") {
    await say(`Reply to the question message for ${taskId} with your answer, or send /hearth answer ${taskId} <text>.`);
    return { handled: true };
  }
  // "merge" / "push" buttons sit on the final checkpoint's card: approve and finish the branch so
  if (action !== "approve" && action !== "reject" && !FINISHES.includes(action)) return { handled: false };
  const finish = FINISHES.includes(action) ? action : undefined;
  const r = await decide(cfg, taskId, action !== "reject", "", who, channel, seq, finish);
  if (r.ok && ctx.respond?.editMessage) {
    await ctx.respond.editMessage({ text: `${original}\n\n${r.text}`.trim() });
  } else {
    await say(r.text);
  }
  return { handled: true };
}

// Slack ------------------------------------------------------------------------------------------
// Slack's Web API for what the channel plugin's respond() cannot do: open the reason dialog
// (views.open with the click's trigger_id) and replace a card after the dialog (chat.update).
async function slackApi(api           , method        , body         )               {
  const base = (process.env.SLACK_API_URL ?? "https://slack.com/api/").replace(/\/*$/, "/");
  const res = await fetch(`${base}${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json; charset=utf-8", Authorization: `Bearer ${api.config?.channels?.slack?.botToken ?? ""}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15000),
  });
  const data      = await res.json().catch(() => ({}));
  if (!data?.ok) throw new Error(`Slack ${method}: ${data?.error ?? res.status}`);
  return data;
}

async function decidedCard(cfg              , taskId        , seq        )                                                      {
  const r = await sidecar(cfg, "GET", `/v1/chat/slack/card/${encodeURIComponent(taskId)}/${seq}`);
  return r.status === 200 && Array.isArray(r.body?.blocks) ? r.body : null;
}

function reasonFrom(interaction                  )         {
  // The dialog's one input (block "reason", action "text"): from the view state, or the summary.
  const state      = interaction.stateValues ?? {};
  const direct = state?.reason?.text?.value ?? state?.values?.reason?.text?.value;
  if (typeof direct === "string") return direct.trim();
  const inputs        = Array.isArray(interaction.inputs) ? interaction.inputs          : [];
  const found = inputs.find((i) => i?.actionId === "text" || i?.blockId === "reason") ?? inputs[0];
  return String(found?.value ?? found?.inputValue ?? "").trim();
}

async function slackClicked(cfg              , api           , ctx                    )                                {
  const it = ctx.interaction ?? {};
  const payload = it.payload ?? (it.value ?? "").replace(/^hearth:/, "");
  const who = slackUser(ctx.senderId);
  const say = async (text        ) => { await ctx.respond?.reply?.({ text }); };
  if (it.kind === "view_submission") {
    // The reason dialog: "reason:T-12:<seq>:<channel>:<card ts>" from its private metadata.
    const [, taskId, seqText, channelId, cardTs] = payload.split(":");
    if (!TASK_ID.test(taskId ?? "")) return { handled: false };
    const seq = Number(seqText);
    const r = await decide(cfg, taskId, false, reasonFrom(it), who, "slack", seq);
    if (r.ok && channelId && cardTs) {
      const card = await decidedCard(cfg, taskId, seq);
      if (card) await slackApi(api, "chat.update", { channel: channelId, ts: cardTs, ...card }).catch((e) => api.logger?.warn?.(String(e)));
    } else if (!r.ok && channelId) {
      await slackApi(api, "chat.postEphemeral", { channel: channelId, user: who, text: r.text }).catch(() => {});
    }
    return { handled: true };
  }
  const [action, taskId, seqText] = payload.split(":");
  if (!TASK_ID.test(taskId ?? "") || (action !== "approve" && action !== "reject")) return { handled: false };
  const seq = Number(seqText);
  if (action === "reject" && it.triggerId) {
    // Ask for the reason first; the decision is taken when the dialog is submitted.
    const check = await sidecar(cfg, "POST", `/v1/tasks/${encodeURIComponent(taskId)}/decision`, {
      decision: "reject", who, channel: "slack", checkpoint: seq, dry_run: true,
    });
    if (check.status !== 200) { await say(failure(check)); return { handled: true }; }
    const meta = { channelId: ctx.conversationId, pluginInteractiveData: `hearth:reason:${taskId}:${seq}:${ctx.conversationId ?? ""}:${it.messageTs ?? ""}` };
    try {
      await slackApi(api, "views.open", { trigger_id: it.triggerId, view: {
        type: "modal", callback_id: `openclaw:hearth:reason:${taskId}:${seq}`, private_metadata: JSON.stringify(meta),
        title: { type: "plain_text", text: `Reject ${taskId}` }, submit: { type: "plain_text", text: "Reject" },
        close: { type: "plain_text", text: "Cancel" },
        blocks: [{ type: "input", block_id: "reason", label: { type: "plain_text", text: "Why? The step is rolled back and redone with this." },
                   element: { type: "plain_text_input", action_id: "text", multiline: true } }],
      } });
      return { handled: true };
    } catch (err) {
      api.logger?.warn?.(`hearth: reason dialog not opened (${(err         ).message}); rejecting without one`);
    }
  }
  const r = await decide(cfg, taskId, action === "approve", "", who, "slack", seq);
  const card = r.ok ? await decidedCard(cfg, taskId, seq) : null;
  if (card && ctx.respond?.editMessage) await ctx.respond.editMessage(card);
  else await say(r.text);
  return { handled: true };
}

async function threadReply(cfg              , event               , ctx                 ) {
  const thread = String(event.replyToId ?? ctx.replyToId ?? "");
  if (!thread) return;
  const who = slackUser(event.senderId ?? ctx.senderId);
  const r = await sidecar(cfg, "POST", `/v1/chat/slack/threads/${encodeURIComponent(thread)}/reply`, {
    text: (event.content ?? "").trim(), who,
  });
  if (r.status !== 200) return { handled: true, text: failure(r) };
  if (!r.body?.task_id) return; // not a task's thread: the chat goes on as usual
  return { handled: true, text: String(r.body.text) };
}

async function quoted(cfg              , event               , ctx                 ) {
  if ((event.channel ?? ctx.channelId) === "slack") return threadReply(cfg, event, ctx);
  const quotedText = event.replyToBody ?? ctx.replyToBody ?? "";
  const m = TAG.exec(quotedText);
  if (!m) return; // not a reply to Hearth: normal dispatch goes on
  const [, taskId, seqText, kind] = m;
  const who = String(event.senderId ?? ctx.senderId ?? "");
  const channel = String(event.channel ?? ctx.channelId ?? "");
  const text = (event.content ?? "").trim();
  if (kind === "Question") {
    const r = await answer(cfg, taskId, text, who, channel, Number(seqText));
    return { handled: true, text: r.text };
  }
  const [word, ...reason] = text.split(/\s+/);
  if (/^(approve|approved|yes|ok|lgtm)$/i.test(word ?? "")) {
    return { handled: true, text: (await decide(cfg, taskId, true, "", who, channel, Number(seqText))).text };
  }
  if (/^(reject|rejected|no)$/i.test(word ?? "")) {
    return { handled: true, text: (await decide(cfg, taskId, false, reason.join(" "), who, channel, Number(seqText))).text };
  }
  return { handled: true, text: `Reply "approve" or "reject <reason>" to decide ${taskId}, or use the buttons.` };
}

export default definePluginEntry({
  id: "hearth",
  name: "Hearth",
  description: "Approve checkpoints, answer questions and submit PRDs to a Hearth cluster from chat.",
  register(api           ) {
    const cfg               = api.pluginConfig ?? {};
    if (!cfg.sidecarUrl) api.logger?.warn?.("hearth: plugins.entries.hearth.config.sidecarUrl is not set");
    api.registerCommand({
      name: "hearth",
      description: "Hearth tasks: status, approve, reject, answer, submit",
      acceptsArgs: true,
      requireAuth: true,
      handler: (ctx) => command(cfg, ctx),
    });
    // Telegram and Slack are tested end to end (tests/test_openclaw_gateway.py, test_slack_gateway.py);
    // Discord delivers the same callback value and is read defensively.
    for (const channel of ["telegram", "discord"]) {
      api.registerInteractiveHandler({ channel, namespace: NAMESPACE, handler: (ctx) => clicked(cfg, ctx, channel) });
    }
    api.registerInteractiveHandler({ channel: "slack", namespace: NAMESPACE, handler: (ctx) => slackClicked(cfg, api, ctx) });
    api.on("before_dispatch", (event, ctx) => quoted(cfg, event, ctx));
  },
});
