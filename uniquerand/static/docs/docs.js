// The /docs page: fetches /openapi.json and renders every operation, parameter and response.
// Text is always inserted with textContent, never as HTML.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(doc, item) {
  if (!item || typeof item.$ref !== "string") return item;
  return resolve(doc, item.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node[key], doc));
}

// Resolves every $ref inside a schema so that the page shows the shape itself.
function inline(doc, value) {
  if (Array.isArray(value)) return value.map((item) => inline(doc, item));
  if (value && typeof value === "object") {
    const resolved = resolve(doc, value);
    return Object.fromEntries(Object.entries(resolved).map(([key, item]) => [key, inline(doc, item)]));
  }
  return value;
}

function json(value) {
  return el("pre", {}, JSON.stringify(value, null, 2));
}

function schemaSummary(schema) {
  const parts = [schema.type || ""];
  if (schema.enum) parts.push("one of " + schema.enum.join(", "));
  if (schema.pattern) parts.push("matching " + schema.pattern);
  if (schema.minimum !== undefined) parts.push("min " + schema.minimum);
  if (schema.maximum !== undefined) parts.push("max " + schema.maximum);
  if (schema.default !== undefined) parts.push("default " + schema.default);
  return parts.filter(Boolean).join("; ");
}

function parametersTable(parameters) {
  const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
    el("th", {}, "required"), el("th", {}, "schema"), el("th", {}, "description")));
  for (const p of parameters) {
    table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "yes" : "no"), el("td", {}, schemaSummary(p.schema || {})),
      el("td", {}, p.description || "")));
  }
  return table;
}

function responsesList(doc, responses) {
  const list = el("div", {});
  for (const [status, reference] of Object.entries(responses)) {
    const response = resolve(doc, reference);
    list.append(el("h4", {}, status + ": " + (response.description || "")));
    const headers = Object.entries(response.headers || {}).map(([name, header]) =>
      name + ": " + (resolve(doc, header).description || ""));
    if (headers.length) list.append(el("p", {}, "Headers: " + headers.join(" | ")));
    for (const [type, media] of Object.entries(response.content || {})) {
      list.append(el("p", {}, el("code", {}, type)), json(inline(doc, media.schema || {})));
    }
  }
  return list;
}

// A small form that sends the request from the page and shows the answer.
function tryIt(path, method, parameters) {
  const form = el("form", { class: "try" });
  const output = el("pre", { hidden: "" });
  for (const p of parameters) form.append(el("label", {}, p.name + " "), el("input", { name: p.name }));
  form.append(el("button", { type: "submit" }, "Send " + method.toUpperCase()));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const p of parameters) {
      const value = form.elements[p.name].value;
      if (value !== "") query.append(p.name, value);
    }
    const url = path + (query.size ? "?" + query : "");
    const response = await fetch(url, { method: method.toUpperCase() });
    output.hidden = false;
    output.textContent = method.toUpperCase() + " " + url + "\n" + response.status + " " +
      response.statusText + "\n" + await response.text();
  });
  return el("div", {}, form, output);
}

function operation(doc, path, method, op) {
  const parameters = op.parameters || [];
  const body = el("div", {}, el("p", {}, op.summary || ""));
  if (parameters.length) body.append(el("h4", {}, "Parameters"), parametersTable(parameters));
  body.append(el("h4", {}, "Responses"), responsesList(doc, op.responses || {}));
  if (method === "get" && path !== "/docs") body.append(tryIt(path, method, parameters));
  return el("details", { class: "operation", id: op.operationId },
    el("summary", {}, el("span", { class: "method " + method }, method), " ", el("code", {}, path)), body);
}

function render(doc) {
  const api = document.getElementById("api");
  api.replaceChildren();
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  api.append(el("section", {}, ...doc.info.description.split("\n\n").map((text) => el("p", {}, text))));
  for (const tag of doc.tags || []) {
    const section = el("section", { class: "tag" }, el("h2", {}, tag.name), el("p", {}, tag.description || ""));
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        if ((op.tags || [])[0] === tag.name) section.append(operation(doc, path, method, op));
      }
    }
    api.append(section);
  }
  const errors = el("section", { class: "tag" }, el("h2", {}, "Errors of any path"));
  errors.append(responsesList(doc, doc.components.responses || {}));
  api.append(errors);
}

fetch("/openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("status").replaceWith(el("p", { id: "error" }, "Could not load /openapi.json: " + error));
  });
