// Swagger UI over this server's /openapi.json. The document lists no `servers`, so "Try it out" sends its
// requests to the server that served this page.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  // The default sends the document to an online validator; this page asks nothing of the internet.
  validatorUrl: null,
  // The plain layout: Swagger UI's standalone top bar would load any document URL typed into it.
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  displayRequestDuration: true,
});
