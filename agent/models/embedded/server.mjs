#!/usr/bin/env node
// Hearth's embedded model server: a small OpenAI-compatible chat server over node-llama-cpp's
// prebuilt llama.cpp (CPU only, no compiler needed).
//
//   node server.mjs --model PATH.gguf --alias NAME --port N [--host 127.0.0.1] [--ctx 4096] [--threads 2]
//                   [--chat-format auto|chatml|wrapper] [--log-prompts]
//
// Routes: GET /health, GET /v1/models, POST /v1/chat/completions (also without the /v1 prefix).
// One request is served at a time (the rest wait in a queue); the single context sequence is reused
// between requests, so the KV cache keeps the longest common prompt prefix and memory does not grow.
//
// Tool calls: when `tools` are given and tool_choice is not "none", generation is constrained by a
// grammar so that the reply is exactly one flat JSON object {"tool": <name>, <that tool's arguments>}
// (anyOf over the tools). It is returned as OpenAI `tool_calls`. Optional parameters appear in the
// grammar as nullable (node-llama-cpp's JSON-schema grammar makes every property required); the nulls
// are dropped again before the arguments are returned. Logs go to stderr.

import http from "node:http";
import {parseArgs} from "node:util";
import {getLlama, LlamaCompletion, LlamaLogLevel, LlamaText, SpecialTokensText, resolveChatWrapper} from "node-llama-cpp";

const {values: opts} = parseArgs({
    options: {
        model: {type: "string"},
        alias: {type: "string", default: "local-model"},
        host: {type: "string", default: "127.0.0.1"},
        port: {type: "string", default: "8080"},
        ctx: {type: "string", default: "4096"},
        threads: {type: "string", default: "2"},
        "chat-format": {type: "string", default: "auto"},
        "log-prompts": {type: "boolean", default: false}
    },
    strict: true
});

function log(message) {
    process.stderr.write(`${new Date().toISOString()} [embedded-model] ${message}\n`);
}

if (!opts.model) {
    log("--model PATH is required");
    process.exit(2);
}
const PORT = Number.parseInt(opts.port, 10);
const CTX = Number.parseInt(opts.ctx, 10);
const THREADS = Number.parseInt(opts.threads, 10);
const MAX_BODY_BYTES = 32 * 1024 * 1024;
const GRAMMAR_CACHE_SIZE = 64;
const MAX_FREE_FORM_PROPERTIES = 8;

/** @type {{status: string, error?: string}} */
const state = {status: "loading"};
let llama, model, context, sequence, completion;
let chatFormat = "chatml";
let chatWrapper = null;
let defaultSystemPrompt = "";
let requestCounter = 0;
let callCounter = 0;
const startedAt = Date.now();

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

class HttpError extends Error {
    constructor(status, message, type = "invalid_request_error", code = null) {
        super(message);
        this.status = status;
        this.type = type;
        this.code = code;
    }
}

function sendJson(res, status, payload) {
    if (res.headersSent) {
        res.end();
        return;
    }
    const body = JSON.stringify(payload);
    res.writeHead(status, {"content-type": "application/json", "content-length": Buffer.byteLength(body)});
    res.end(body);
}

function sendError(res, status, message, type = "invalid_request_error", code = null) {
    if (res.headersSent) {
        // mid-stream: report in-band and close
        res.end(`data: ${JSON.stringify({error: {message, type, code}})}\n\n`);
        return;
    }
    sendJson(res, status, {error: {message, type, code}});
}

async function readJsonBody(req) {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
        size += chunk.length;
        if (size > MAX_BODY_BYTES)
            throw new HttpError(413, `request body is larger than ${MAX_BODY_BYTES} bytes`);
        chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString("utf8");
    try {
        return JSON.parse(text);
    } catch (err) {
        throw new HttpError(400, `request body is not JSON: ${err.message}`);
    }
}

// One generation at a time: requests wait on this chain.
let queueTail = Promise.resolve();
let queued = 0;
function enqueue(job) {
    queued++;
    const run = queueTail.then(job, job);
    queueTail = run.catch(() => undefined).finally(() => {
        queued--;
    });
    return run;
}

async function handle(req, res) {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    if (req.method === "GET" && (path === "/health" || path === "/v1/health")) {
        if (state.status === "ok")
            return sendJson(res, 200, {status: "ok"});
        return sendJson(res, 503, {status: state.status, error: state.error});
    }
    if (req.method === "GET" && (path === "/v1/models" || path === "/models")) {
        const meta = model == null ? {} : {
            n_ctx: CTX,
            n_ctx_train: model.trainContextSize,
            size: model.size,
            chat_format: chatFormat
        };
        return sendJson(res, 200, {
            object: "list",
            data: [{id: opts.alias, object: "model", created: Math.floor(startedAt / 1000), owned_by: "hearth", meta}]
        });
    }
    if (path === "/v1/chat/completions" || path === "/chat/completions") {
        if (req.method !== "POST")
            throw new HttpError(405, "use POST");
        const body = await readJsonBody(req);
        if (state.status !== "ok")
            throw new HttpError(503, `model is ${state.status}`, "unavailable_error");
        const abort = new AbortController();
        res.on("close", () => {
            if (!res.writableFinished)
                abort.abort(new Error("client went away"));
        });
        return await enqueue(() => chatCompletion(body, res, abort.signal));
    }
    throw new HttpError(404, `no route ${req.method} ${path}`, "not_found_error");
}

// ---------------------------------------------------------------------------------------------
// JSON schema -> node-llama-cpp grammar schema (flat, tight, every property present)

const BASIC_TYPES = new Set(["string", "number", "integer", "boolean", "null"]);
const ANY_SCALAR = {type: ["string", "number", "boolean", "null"]};

function resolveRef(ref, root) {
    if (typeof ref !== "string" || !ref.startsWith("#/"))
        return undefined;
    let node = root;
    for (const part of ref.slice(2).split("/")) {
        if (node == null || typeof node !== "object")
            return undefined;
        node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    return node;
}

function isPlainObject(value) {
    return value != null && typeof value === "object" && !Array.isArray(value);
}

function mergeAllOf(schema) {
    const merged = {...schema};
    delete merged.allOf;
    for (const part of schema.allOf) {
        if (!isPlainObject(part))
            continue;
        for (const [key, value] of Object.entries(part)) {
            if (key === "properties")
                merged.properties = {...merged.properties, ...value};
            else if (key === "required")
                merged.required = [...(merged.required ?? []), ...value];
            else if (!(key in merged))
                merged[key] = value;
        }
    }
    return merged;
}

function toGrammarSchema(schema, root, depth = 0) {
    if (depth > 8 || !isPlainObject(schema))
        return ANY_SCALAR;
    if (schema.$ref != null) {
        const target = resolveRef(schema.$ref, root);
        return target == null ? ANY_SCALAR : toGrammarSchema(target, root, depth + 1);
    }
    if ("const" in schema)
        return {const: schema.const};
    if (Array.isArray(schema.enum)) {
        const values = schema.enum.filter((v) => v === null || ["string", "number", "boolean"].includes(typeof v));
        return values.length > 0 ? {enum: values} : ANY_SCALAR;
    }
    const alternatives = schema.anyOf ?? schema.oneOf;
    if (Array.isArray(alternatives) && alternatives.length > 0) {
        const converted = alternatives.map((alt) => toGrammarSchema(alt, root, depth + 1));
        return converted.length === 1 ? converted[0] : {oneOf: converted};
    }
    if (Array.isArray(schema.allOf) && schema.allOf.length > 0)
        return toGrammarSchema(mergeAllOf(schema), root, depth + 1);

    let type = schema.type;
    if (Array.isArray(type)) {
        if (type.length === 0)
            return ANY_SCALAR;
        if (type.every((t) => BASIC_TYPES.has(t)))
            return {type: [...new Set(type)]};
        if (type.length === 1)
            type = type[0];
        else
            return {oneOf: type.map((t) => toGrammarSchema({...schema, type: t}, root, depth + 1))};
    }
    if (type == null)
        type = isPlainObject(schema.properties) ? "object" : schema.items != null ? "array" : undefined;

    switch (type) {
        case "string": {
            if (["date-time", "time", "date"].includes(schema.format))
                return {type: "string", format: schema.format};
            const out = {type: "string"};
            if (Number.isInteger(schema.minLength))
                out.minLength = schema.minLength;
            if (Number.isInteger(schema.maxLength))
                out.maxLength = schema.maxLength;
            return out;
        }
        case "number":
        case "integer":
        case "boolean":
        case "null":
            return {type};
        case "array": {
            const out = {
                type: "array",
                items: isPlainObject(schema.items) ? toGrammarSchema(schema.items, root, depth + 1) : ANY_SCALAR
            };
            if (Number.isInteger(schema.minItems))
                out.minItems = schema.minItems;
            if (Number.isInteger(schema.maxItems))
                out.maxItems = schema.maxItems;
            return out;
        }
        case "object":
            return objectToGrammarSchema(schema, root, depth);
        default:
            return ANY_SCALAR;
    }
}

function objectToGrammarSchema(schema, root, depth, extraLeading = {}) {
    const properties = isPlainObject(schema.properties) ? schema.properties : {};
    const keys = Object.keys(properties);
    if (keys.length === 0 && Object.keys(extraLeading).length === 0) {
        if (schema.additionalProperties === false)
            return {type: "object", properties: {}};
        // free-form map: bound it, or a small model writes keys until max_tokens
        const additional = isPlainObject(schema.additionalProperties)
            ? toGrammarSchema(schema.additionalProperties, root, depth + 1)
            : ANY_SCALAR;
        return {
            type: "object",
            additionalProperties: additional,
            maxProperties: Math.min(
                Number.isInteger(schema.maxProperties) ? schema.maxProperties : MAX_FREE_FORM_PROPERTIES,
                MAX_FREE_FORM_PROPERTIES
            )
        };
    }
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const ordered = [...keys.filter((k) => required.has(k)), ...keys.filter((k) => !required.has(k))];
    const out = {...extraLeading};
    for (const key of ordered) {
        if (key in extraLeading)
            continue;
        const converted = toGrammarSchema(properties[key], root, depth + 1);
        out[key] = required.has(key) ? converted : nullable(converted);
    }
    return {type: "object", properties: out};
}

function nullable(schema) {
    const keys = Object.keys(schema);
    if (keys.length === 1 && keys[0] === "type") {
        const types = Array.isArray(schema.type) ? schema.type : [schema.type];
        return types.includes("null") ? schema : {type: [...types, "null"]};
    }
    if (Array.isArray(schema.enum))
        return schema.enum.includes(null) ? schema : {enum: [...schema.enum, null]};
    if ("const" in schema)
        return schema.const === null ? schema : {enum: [schema.const, null]};
    return {oneOf: [schema, {type: "null"}]};
}

function allowsNull(schema, root, depth = 0) {
    if (!isPlainObject(schema) || depth > 8)
        return false;
    if (schema.$ref != null)
        return allowsNull(resolveRef(schema.$ref, root), root, depth + 1);
    if (schema.nullable === true || schema.const === null)
        return true;
    if (Array.isArray(schema.enum))
        return schema.enum.includes(null);
    const alternatives = schema.anyOf ?? schema.oneOf;
    if (Array.isArray(alternatives))
        return alternatives.some((alt) => allowsNull(alt, root, depth + 1));
    if (Array.isArray(schema.type))
        return schema.type.includes("null");
    return schema.type === "null";
}

/** Drop the nulls the grammar made the model write for optional properties that do not allow null. */
function dropOptionalNulls(value, schema, root, depth = 0) {
    if (!isPlainObject(schema) || depth > 8)
        return value;
    if (schema.$ref != null)
        return dropOptionalNulls(value, resolveRef(schema.$ref, root), root, depth + 1);
    if (Array.isArray(schema.allOf))
        schema = mergeAllOf(schema);
    if (Array.isArray(value) && isPlainObject(schema.items))
        return value.map((item) => dropOptionalNulls(item, schema.items, root, depth + 1));
    if (!isPlainObject(value) || !isPlainObject(schema.properties))
        return value;
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const out = {};
    for (const [key, item] of Object.entries(value)) {
        const propSchema = schema.properties[key];
        if (item === null && !required.has(key) && !allowsNull(propSchema, root))
            continue;
        out[key] = dropOptionalNulls(item, propSchema, root, depth + 1);
    }
    return out;
}

const grammarCache = new Map();
async function grammarFor(grammarSchema) {
    const key = JSON.stringify(grammarSchema);
    let grammar = grammarCache.get(key);
    if (grammar == null) {
        const started = Date.now();
        grammar = await llama.createGrammarForJsonSchema(grammarSchema);
        log(`grammar built in ${Date.now() - started} ms (${key.length} chars of schema)`);
        grammarCache.set(key, grammar);
        if (grammarCache.size > GRAMMAR_CACHE_SIZE)
            grammarCache.delete(grammarCache.keys().next().value);
    } else {
        grammarCache.delete(key);
        grammarCache.set(key, grammar);
    }
    return grammar;
}

let jsonGrammar = null;
async function anyJsonGrammar() {
    jsonGrammar ??= await llama.getGrammarFor("json");
    return jsonGrammar;
}

// ---------------------------------------------------------------------------------------------
// Prompt rendering

function contentText(content) {
    if (content == null)
        return "";
    if (typeof content === "string")
        return content;
    if (Array.isArray(content))
        return content.map((part) => typeof part === "string" ? part : String(part?.text ?? "")).join("");
    return JSON.stringify(content);
}

function parseArguments(raw) {
    if (isPlainObject(raw))
        return raw;
    if (typeof raw !== "string")
        return raw ?? {};
    try {
        return JSON.parse(raw);
    } catch {
        return raw;
    }
}

/** A previous tool call, written the way the grammar makes the model write one. */
function renderToolCall(call) {
    const name = String(call?.function?.name ?? call?.name ?? "unknown");
    const args = parseArguments(call?.function?.arguments ?? call?.arguments);
    if (!isPlainObject(args))
        return JSON.stringify({tool: name, arguments: args});
    const {tool: _ignored, ...rest} = args;
    return JSON.stringify({tool: name, ...rest});
}

function typeText(schema, depth = 0) {
    if (!isPlainObject(schema) || depth > 3)
        return "any";
    if ("const" in schema)
        return JSON.stringify(schema.const);
    if (Array.isArray(schema.enum))
        return `one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`;
    const alternatives = schema.anyOf ?? schema.oneOf;
    if (Array.isArray(alternatives))
        return alternatives.map((alt) => typeText(alt, depth + 1)).join(" or ");
    if (Array.isArray(schema.type))
        return schema.type.join(" or ");
    if (schema.type === "array")
        return `array of ${typeText(schema.items, depth + 1)}`;
    if (schema.type === "object" && isPlainObject(schema.properties))
        return `object {${Object.entries(schema.properties).map(([k, v]) => `"${k}": ${typeText(v, depth + 1)}`).join(", ")}}`;
    return schema.type ?? "any";
}

function toolsSystemText(tools, forcedName) {
    const lines = ["You can use these tools:"];
    for (const tool of tools) {
        const fn = tool.function;
        lines.push(`- ${fn.name}: ${String(fn.description ?? "").trim() || "(no description)"}`);
        const params = isPlainObject(fn.parameters?.properties) ? fn.parameters.properties : {};
        const required = new Set(Array.isArray(fn.parameters?.required) ? fn.parameters.required : []);
        for (const [key, schema] of Object.entries(params)) {
            const optional = required.has(key) ? "" : " (optional: write null to leave it out)";
            const description = String(schema?.description ?? "").trim();
            lines.push(`    "${key}": ${typeText(schema)}${optional}${description ? ` - ${description}` : ""}`);
        }
    }
    const example = tools.find((t) => t.function.name === forcedName) ?? tools[0];
    const exampleParams = isPlainObject(example.function.parameters?.properties) ? example.function.parameters.properties : {};
    const exampleFields = [`"tool": "${example.function.name}"`,
        ...Object.entries(exampleParams).map(([key, schema]) => `"${key}": <${typeText(schema)}>`)];
    lines.push(
        "",
        "To use a tool, reply with exactly one JSON object and nothing else: the key \"tool\" holds the tool's name,",
        "the other keys are that tool's arguments, in this form:",
        `{${exampleFields.join(", ")}}`
    );
    if (forcedName != null)
        lines.push(`Use the tool "${forcedName}" now.`);
    return lines.join("\n");
}

/** OpenAI messages -> [{role: system|user|assistant, text}] the chat template can take. */
function toTurns(messages, toolsText) {
    const turns = [];
    const toolNames = new Map();
    for (const message of messages) {
        if (!isPlainObject(message))
            throw new HttpError(400, "every message must be an object");
        const role = message.role;
        if (role === "system" || role === "developer") {
            turns.push({role: "system", text: contentText(message.content)});
        } else if (role === "user") {
            turns.push({role: "user", text: contentText(message.content)});
        } else if (role === "assistant") {
            const parts = [];
            const text = contentText(message.content);
            if (text !== "")
                parts.push(text);
            for (const call of Array.isArray(message.tool_calls) ? message.tool_calls : []) {
                if (call?.id != null)
                    toolNames.set(call.id, call?.function?.name);
                parts.push(renderToolCall(call));
            }
            turns.push({role: "assistant", text: parts.join("\n")});
        } else if (role === "tool" || role === "function") {
            const id = message.tool_call_id;
            const name = toolNames.get(id) ?? message.name;
            const label = `Result of tool ${name ?? "call"}${id != null ? ` (${id})` : ""}:`;
            turns.push({role: "user", text: `${label}\n${contentText(message.content)}`});
        } else {
            throw new HttpError(400, `unknown message role ${JSON.stringify(role)}`);
        }
    }
    if (toolsText != null) {
        if (turns.length > 0 && turns[0].role === "system")
            turns[0] = {role: "system", text: turns[0].text ? `${turns[0].text}\n\n${toolsText}` : toolsText};
        else
            turns.unshift({role: "system", text: toolsText});
    } else if (!turns.some((t) => t.role === "system") && defaultSystemPrompt !== "") {
        turns.unshift({role: "system", text: defaultSystemPrompt});
    }
    return turns;
}

function renderPrompt(turns) {
    if (chatFormat === "chatml") {
        const pieces = [];
        for (const turn of turns)
            pieces.push(new SpecialTokensText("<|im_start|>"), `${turn.role}\n${turn.text}`, new SpecialTokensText("<|im_end|>\n"));
        pieces.push(new SpecialTokensText("<|im_start|>"), "assistant\n");
        return {tokens: LlamaText(pieces).tokenize(model.tokenizer), stopTriggers: []};
    }
    const chatHistory = turns.map((turn) => turn.role === "assistant"
        ? {type: "model", response: [turn.text]}
        : {type: turn.role, text: turn.text});
    chatHistory.push({type: "model", response: []});
    const generated = chatWrapper.generateContextState({chatHistory});
    const tokens = generated.contextText.tokenize(model.tokenizer);
    if (tokens.length > 1 && tokens[0] === tokens[1] && tokens[0] === model.tokens.bos)
        tokens.shift();
    return {tokens, stopTriggers: generated.stopGenerationTriggers ?? []};
}

// ---------------------------------------------------------------------------------------------
// /v1/chat/completions

function selectTools(body) {
    const tools = Array.isArray(body.tools)
        ? body.tools.filter((t) => t?.type === "function" && typeof t.function?.name === "string")
        : [];
    const choice = body.tool_choice ?? "auto";
    if (tools.length === 0 || choice === "none")
        return {tools, callTools: [], forced: null};
    if (choice === "auto" || choice === "required")
        return {tools, callTools: tools, forced: null};
    if (isPlainObject(choice)) {
        const name = choice.function?.name ?? choice.name;
        const picked = tools.filter((t) => t.function.name === name);
        if (picked.length === 0)
            throw new HttpError(400, `tool_choice names ${JSON.stringify(name)}, which is not among the tools`);
        return {tools, callTools: picked, forced: name};
    }
    throw new HttpError(400, `tool_choice must be "auto", "none", "required" or {"type":"function",...}, got ${JSON.stringify(choice)}`);
}

function responseFormatSchema(body) {
    const format = body.response_format;
    if (!isPlainObject(format) || format.type == null || format.type === "text")
        return null;
    if (format.type === "json_object")
        return {kind: "json", schema: isPlainObject(format.schema) ? format.schema : null};
    if (format.type === "json_schema") {
        const schema = format.json_schema?.schema ?? format.schema;
        if (!isPlainObject(schema))
            throw new HttpError(400, "response_format json_schema needs json_schema.schema");
        return {kind: "json", schema};
    }
    throw new HttpError(400, `unsupported response_format type ${JSON.stringify(format.type)}`);
}

function numberOr(value, fallback) {
    return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

async function chatCompletion(body, res, signal) {
    if (signal.aborted)
        return;
    if (!Array.isArray(body.messages) || body.messages.length === 0)
        throw new HttpError(400, "messages must be a non-empty array");
    const started = performance.now();
    const id = `chatcmpl-${++requestCounter}`;
    const {callTools, forced} = selectTools(body);
    const format = callTools.length === 0 ? responseFormatSchema(body) : null;

    let grammar;
    let toolSchemas = null;
    if (callTools.length > 0) {
        toolSchemas = new Map(callTools.map((t) => [t.function.name, t.function.parameters ?? {}]));
        const variants = callTools.map((t) => {
            const params = isPlainObject(t.function.parameters) ? t.function.parameters : {};
            return objectToGrammarSchema({...params, type: "object"}, params, 0, {tool: {const: t.function.name}});
        });
        grammar = await grammarFor(variants.length === 1 ? variants[0] : {oneOf: variants});
    } else if (format != null) {
        grammar = format.schema == null ? await anyJsonGrammar() : await grammarFor(toGrammarSchema(format.schema, format.schema));
    }

    const turns = toTurns(body.messages, callTools.length > 0 ? toolsSystemText(callTools, forced) : null);
    const {tokens, stopTriggers} = renderPrompt(turns);
    if (opts["log-prompts"])
        log(`${id} prompt:\n${model.detokenize(tokens, true)}`);
    if (tokens.length >= CTX - 1)
        throw new HttpError(400, `the prompt is ${tokens.length} tokens; the context holds ${CTX}`,
            "invalid_request_error", "context_length_exceeded");
    const requestedMax = numberOr(body.max_completion_tokens, numberOr(body.max_tokens, Infinity));
    const maxTokens = Math.max(1, Math.min(requestedMax, CTX - tokens.length));
    const temperature = numberOr(body.temperature, 0.8);
    const stop = body.stop == null ? [] : (Array.isArray(body.stop) ? body.stop : [body.stop]).filter((s) => typeof s === "string" && s !== "");
    const stream = body.stream === true;

    const cacheN = Math.min(sequence.compareContextTokens(tokens).firstDifferentIndex, tokens.length - 1);
    const meterBefore = sequence.tokenMeter.getState();
    let firstTokenAt = null;
    let lastTokenAt = null;
    const writeChunk = (delta, finishReason = null, extra = {}) => res.write(`data: ${JSON.stringify({
        id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model: opts.alias,
        choices: [{index: 0, delta, finish_reason: finishReason, logprobs: null}], ...extra
    })}\n\n`);
    if (stream) {
        res.writeHead(200, {"content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive"});
        writeChunk({role: "assistant", content: ""});
    }
    const streamText = stream && callTools.length === 0;

    const result = await completion.generateCompletionWithMeta(tokens, {
        grammar,
        temperature,
        topP: typeof body.top_p === "number" ? body.top_p : undefined,
        seed: Number.isInteger(body.seed) ? body.seed : undefined,
        maxTokens,
        repeatPenalty: typeof body.frequency_penalty === "number" || typeof body.presence_penalty === "number"
            ? {penalty: 1, frequencyPenalty: body.frequency_penalty ?? 0, presencePenalty: body.presence_penalty ?? 0}
            : false,
        customStopTriggers: [...stop, ...stopTriggers].length > 0 ? [...stop, ...stopTriggers] : undefined,
        disableContextShift: true,
        signal,
        stopOnAbortSignal: true,
        onToken: () => {
            const now = performance.now();
            firstTokenAt ??= now;
            lastTokenAt = now;
        },
        onTextChunk: streamText ? (text) => writeChunk({content: text}) : undefined
    });
    const finished = performance.now();
    if (signal.aborted) {
        log(`${id}: client went away; generation stopped`);
        res.end();
        return;
    }
    const meterAfter = sequence.tokenMeter.getState();
    const completionTokens = meterAfter.usedOutputTokens - meterBefore.usedOutputTokens;
    const evaluatedPromptTokens = meterAfter.usedInputTokens - meterBefore.usedInputTokens;
    const text = result.response;
    const stopReason = result.metadata.stopReason;

    let message = {role: "assistant", content: text};
    let finishReason = stopReason === "maxTokens" ? "length" : "stop";
    if (callTools.length > 0) {
        let parsed;
        try {
            parsed = JSON.parse(text);
        } catch {
            parsed = undefined;
        }
        if (isPlainObject(parsed) && toolSchemas.has(parsed.tool)) {
            const {tool: name, ...args} = parsed;
            const schema = toolSchemas.get(name);
            const cleaned = dropOptionalNulls(args, schema, schema);
            message = {
                role: "assistant",
                content: "",
                tool_calls: [{id: `call_${++callCounter}`, type: "function", function: {name, arguments: JSON.stringify(cleaned)}}]
            };
            finishReason = "tool_calls";
        } else {
            log(`${id}: constrained tool call did not complete (${stopReason}); returning the raw text`);
        }
    } else if (format?.schema != null) {
        try {
            message.content = JSON.stringify(dropOptionalNulls(JSON.parse(text), format.schema, format.schema));
        } catch {
            // truncated by max_tokens: hand back what was generated
        }
    }

    const promptMs = (firstTokenAt ?? finished) - started;
    const predictedMs = firstTokenAt == null || lastTokenAt == null ? 0 : lastTokenAt - firstTokenAt;
    const usage = {prompt_tokens: tokens.length, completion_tokens: completionTokens, total_tokens: tokens.length + completionTokens};
    const timings = {
        cache_n: Math.max(0, cacheN),
        prompt_n: evaluatedPromptTokens,
        prompt_ms: round(promptMs),
        prompt_per_second: promptMs > 0 && evaluatedPromptTokens > 0 ? round(evaluatedPromptTokens / (promptMs / 1000)) : null,
        predicted_n: completionTokens,
        predicted_ms: round(predictedMs),
        predicted_per_second: predictedMs > 0 && completionTokens > 1 ? round((completionTokens - 1) / (predictedMs / 1000)) : null,
        total_ms: round(finished - started)
    };
    log(`${id}: ${tokens.length} prompt tokens (${timings.cache_n} cached), ${completionTokens} generated, ` +
        `${timings.total_ms} ms, finish=${finishReason}${callTools.length > 0 ? `, tools=${callTools.length}` : ""}, queue=${queued - 1}`);

    if (stream) {
        if (message.tool_calls != null)
            writeChunk({tool_calls: message.tool_calls.map((call, index) => ({index, ...call}))});
        else if (!streamText)
            writeChunk({content: message.content});
        writeChunk({}, finishReason, {timings});
        if (body.stream_options?.include_usage === true)
            res.write(`data: ${JSON.stringify({id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000),
                model: opts.alias, choices: [], usage})}\n\n`);
        res.end("data: [DONE]\n\n");
        return;
    }
    sendJson(res, 200, {
        id,
        object: "chat.completion",
        created: Math.floor(Date.now() / 1000),
        model: opts.alias,
        choices: [{index: 0, message, finish_reason: finishReason, logprobs: null}],
        usage,
        timings
    });
}

function round(value) {
    return Math.round(value * 100) / 100;
}

// ---------------------------------------------------------------------------------------------
// Start-up and shutdown

const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
        if (err instanceof HttpError) {
            log(`${req.method} ${req.url}: ${err.status} ${err.message}`);
            sendError(res, err.status, err.message, err.type, err.code);
        } else {
            log(`${req.method} ${req.url}: 500 ${err?.stack ?? err}`);
            sendError(res, 500, String(err?.message ?? err), "server_error");
        }
    });
});
// Keep idle connections open longer than HTTP clients keep them pooled (httpx: 5 s), so a client never
// sends a request on a socket the server is closing at the same moment.
server.keepAliveTimeout = 75_000;
server.headersTimeout = 80_000;
server.requestTimeout = 0;
server.on("error", (err) => {
    log(`cannot listen on ${opts.host}:${PORT}: ${err.message}`);
    process.exit(err.code === "EADDRINUSE" ? 98 : 1);
});
server.listen(PORT, opts.host, () => log(`listening on http://${opts.host}:${PORT}; loading ${opts.model}`));

let stopping = false;
async function shutdown(signalName) {
    if (stopping)
        return;
    stopping = true;
    log(`${signalName}: shutting down`);
    setTimeout(() => process.exit(0), 3000).unref();
    server.close();
    server.closeAllConnections?.();
    try {
        await context?.dispose();
        await model?.dispose();
        await llama?.dispose();
    } catch (err) {
        log(`dispose failed: ${err?.message ?? err}`);
    }
    process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));

try {
    const loadStarted = performance.now();
    llama = await getLlama({
        gpu: false,
        build: "never",
        logLevel: LlamaLogLevel.warn,
        logger: (level, message) => log(`llama.cpp ${level}: ${String(message).trimEnd()}`)
    });
    model = await llama.loadModel({modelPath: opts.model});
    context = await model.createContext({contextSize: CTX, threads: THREADS, sequences: 1});
    sequence = context.getSequence();
    completion = new LlamaCompletion({contextSequence: sequence});

    const template = String(model.fileInfo.metadata?.tokenizer?.chat_template ?? "");
    const imStart = model.tokenize("<|im_start|>", true);
    const hasChatMl = imStart.length === 1 && model.isSpecialToken(imStart[0]);
    const requested = opts["chat-format"];
    chatFormat = requested === "auto" ? (hasChatMl ? "chatml" : "wrapper") : requested;
    if (chatFormat === "chatml") {
        const match = /<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>/s.exec(template);
        defaultSystemPrompt = match?.[1] ?? "";
    } else if (chatFormat === "wrapper") {
        chatWrapper = resolveChatWrapper(model);
    } else {
        throw new Error(`--chat-format must be auto, chatml or wrapper, not ${requested}`);
    }
    state.status = "ok";
    log(`model ready in ${Math.round(performance.now() - loadStarted)} ms: alias=${opts.alias} ctx=${CTX} ` +
        `threads=${THREADS} chat_format=${chatFormat}${chatWrapper ? ` (${chatWrapper.wrapperName})` : ""}`);
} catch (err) {
    state.status = "error";
    state.error = String(err?.message ?? err);
    log(`failed to load the model: ${err?.stack ?? err}`);
    process.exit(1);
}
