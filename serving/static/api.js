// Swagger UI for this service's OpenAPI document. validatorUrl: null keeps Swagger UI from
// sending the document to validator.swagger.io and showing its badge image from there.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
