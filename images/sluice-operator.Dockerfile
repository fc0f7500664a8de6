# sluice-operator: a small non-root runtime image; see sluice-mta.Dockerfile.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice-operator" \
      org.opencontainers.image.description="Sluice operator: QueuePolicy, EgressPool and EgressPath into hot-loaded MTA policy" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY sluice-operator /usr/local/bin/sluice-operator
USER 65532:65532
WORKDIR /home/nonroot
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-operator"]
CMD ["run"]
