// Loaded between require.js and the ipywidgets embed manager (see _config.yml, nb_ipywidgets_js).
(function () {
  // 1. The embed manager and the widget modules load their fonts from the folder of their
  //    module's URL ("@jupyter-widgets/html-manager/dist/", "@jupyter-widgets/"), which require.js
  //    resolves against the page's folder; they are served from _static/widgets/ (this script is
  //    _static/widgets-setup.js).
  var widgets = document.currentScript.src.replace(/[^/]*$/, "") + "widgets";
  require.config({paths: {"@jupyter-widgets/html-manager/dist": widgets,
                          "@jupyter-widgets/base": widgets + "/base",
                          "@jupyter-widgets/controls": widgets + "/controls"}});
  // 2. html-manager 1.0.6 typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book
  //    serves MathJax 3, which has no Hub. Give it one that calls MathJax 3's typesetPromise.
  function hub() {
    return {Queue: function (job) {
      var el = Array.isArray(job) ? job[2] : undefined;
      var mj = window.MathJax;
      var started = (mj && mj.startup && mj.startup.promise) || Promise.resolve();
      return started.then(function () {
        if (window.MathJax && window.MathJax.typesetPromise) return window.MathJax.typesetPromise(el ? [el] : undefined);
      });
    }};
  }
  var config = window.MathJax = window.MathJax || {};
  config.Hub = hub();                               // used before MathJax 3 has started
  config.startup = config.startup || {};
  var ready = config.startup.ready;
  config.startup.ready = function () {              // MathJax 3 replaces window.MathJax when it starts
    if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
    window.MathJax.Hub = hub();
  };
})();
