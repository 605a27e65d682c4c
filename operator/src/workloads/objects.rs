//! Desired ServiceAccount, ConfigMap, Services, StatefulSets and PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{
    ComponentSpec, DEFAULT_COMPACTOR_VOLUME, DEFAULT_INGESTER_VOLUME, MimirCluster,
    MimirClusterSpec, StatefulComponentSpec,
};
use crate::workloads::config::{DATA_DIR, config_yaml};
use crate::workloads::{
    CONFIG_HASH_ANNOTATION, GRPC_PORT, HTTP_PORT, Names, ROLE_ARN_ANNOTATION, child_meta,
    config_hash, selector_labels,
};

/// Key of `rimir.yaml` in the ConfigMap.
pub const CONFIG_KEY: &str = "rimir.yaml";
const CONFIG_MOUNT: &str = "/etc/rimir";

/// Every Kubernetes child of one MimirCluster, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The pods' ServiceAccount, annotated with the role ARN.
    pub service_account: ServiceAccount,
    /// `rimir.yaml`.
    pub config_map: ConfigMap,
    /// Headless Services for each StatefulSet plus ClusterIP Services for distributor and querier.
    pub services: Vec<Service>,
    /// One StatefulSet per component.
    pub statefulsets: Vec<StatefulSet>,
    /// PodDisruptionBudget of the ingesters.
    pub ingester_pdb: PodDisruptionBudget,
}

/// Builds every child from the spec and the role ARN.
pub fn desired_children(mc: &MimirCluster, role_arn: &str) -> Children {
    let names = Names::of(mc);
    let yaml = config_yaml(mc, &names);
    let hash = config_hash(&yaml, role_arn);
    let mut services = Vec::new();
    for component in crate::workloads::COMPONENTS {
        services.push(headless_service(mc, &names, component));
        if component == "distributor" || component == "querier" {
            services.push(cluster_ip_service(mc, &names, component));
        }
    }
    Children {
        service_account: service_account(mc, &names, role_arn),
        config_map: config_map(mc, &names, yaml),
        services,
        statefulsets: crate::workloads::COMPONENTS
            .iter()
            .map(|c| statefulset(mc, &names, c, &hash))
            .collect(),
        ingester_pdb: ingester_pdb(mc, &names),
    }
}

/// The ServiceAccount: the user's extra annotations plus the IRSA role ARN.
pub fn service_account(mc: &MimirCluster, names: &Names, role_arn: &str) -> ServiceAccount {
    let mut meta = child_meta(
        mc,
        names,
        mc.spec.service_account_name(&names.cluster),
        None,
    );
    let mut annotations = mc.spec.service_account.annotations.clone();
    annotations.insert(ROLE_ARN_ANNOTATION.to_string(), role_arn.to_string());
    meta.annotations = Some(annotations);
    ServiceAccount {
        metadata: meta,
        ..ServiceAccount::default()
    }
}

/// The ConfigMap holding `rimir.yaml`.
pub fn config_map(mc: &MimirCluster, names: &Names, yaml: String) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(mc, names, names.config_map(), None),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    }
}

fn ports() -> Vec<ServicePort> {
    vec![
        ServicePort {
            name: Some("http".into()),
            port: HTTP_PORT,
            target_port: Some(IntOrString::String("http".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        },
        ServicePort {
            name: Some("grpc".into()),
            port: GRPC_PORT,
            target_port: Some(IntOrString::String("grpc".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        },
    ]
}

/// Headless Service governing a StatefulSet; ingesters' one also feeds the ring's DNS discovery,
/// so it publishes pods before they are ready.
pub fn headless_service(mc: &MimirCluster, names: &Names, component: &str) -> Service {
    Service {
        metadata: child_meta(
            mc,
            names,
            names.headless_service(component),
            Some(component),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, component)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// ClusterIP Service clients use: the distributor's for `/api/v1/push`, the querier's for Grafana.
pub fn cluster_ip_service(mc: &MimirCluster, names: &Names, component: &str) -> Service {
    Service {
        metadata: child_meta(mc, names, names.service(component), Some(component)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names, component)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Replicas, resources and volume of a component, whatever its spec type.
struct Shape<'a> {
    replicas: i32,
    resources: Option<&'a k8s_openapi::api::core::v1::ResourceRequirements>,
    /// `Some((size, storage class))` when the component gets a PVC per pod.
    claim: Option<(String, Option<String>)>,
    /// The component writes to `/data` (PVC or emptyDir).
    needs_data: bool,
}

fn shape<'a>(spec: &'a MimirClusterSpec, component: &str) -> Shape<'a> {
    let stateless = |c: &'a ComponentSpec| Shape {
        replicas: c.replicas,
        resources: c.resources.as_ref(),
        claim: None,
        needs_data: false,
    };
    let stateful = |c: &'a StatefulComponentSpec, default: &str| {
        let enabled = c.persistent_volume.as_ref().is_none_or(|pv| pv.enabled);
        Shape {
            replicas: c.replicas,
            resources: c.resources.as_ref(),
            claim: enabled.then(|| {
                (
                    MimirClusterSpec::volume_size(c, default),
                    c.persistent_volume
                        .as_ref()
                        .and_then(|pv| pv.storage_class_name.clone()),
                )
            }),
            needs_data: true,
        }
    };
    match component {
        "distributor" => stateless(&spec.distributor),
        "querier" => stateless(&spec.querier),
        "ingester" => stateful(&spec.ingester, DEFAULT_INGESTER_VOLUME),
        _ => stateful(&spec.compactor, DEFAULT_COMPACTOR_VOLUME),
    }
}

/// The StatefulSet of one component; `hash` goes on the pod template to roll pods on change.
pub fn statefulset(mc: &MimirCluster, names: &Names, component: &str, hash: &str) -> StatefulSet {
    let spec = &mc.spec;
    let shape = shape(spec, component);
    let selector = selector_labels(names, component);
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.config_map(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if shape.needs_data {
        mounts.push(VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        });
        if shape.claim.is_none() {
            volumes.push(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
        }
    }
    let claims = shape.claim.map(|(size, class)| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class,
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    let container = Container {
        name: "rimir".into(),
        image: Some(spec.image.clone()),
        args: Some(vec![
            format!("--target={component}"),
            format!("--config.file={CONFIG_MOUNT}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT,
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        resources: shape.resources.cloned(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod_labels = crate::workloads::labels(names, Some(component));
    pod_labels.extend(selector.clone());
    StatefulSet {
        metadata: child_meta(mc, names, names.statefulset(component), Some(component)),
        spec: Some(StatefulSetSpec {
            replicas: Some(shape.replicas),
            service_name: Some(names.headless_service(component)),
            // Ingesters must all come up for the ring; ordered start would serialise them.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(spec.service_account_name(&names.cluster)),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(10001),
                        fs_group: Some(10001),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(if component == "ingester" {
                        240
                    } else {
                        30
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// At most one ingester down at a time through voluntary disruptions: with replication factor 3
/// a quorum of every series' replicas stays up.
pub fn ingester_pdb(mc: &MimirCluster, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(mc, names, names.ingester_pdb(), Some("ingester")),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names, "ingester")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::sample;

    const ROLE: &str = "arn:aws:iam::123456789012:role/rimir-monitoring-prod";

    fn sts<'a>(c: &'a Children, component: &str) -> &'a StatefulSet {
        c.statefulsets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&format!("prod-{component}")))
            .unwrap()
    }

    #[test]
    fn service_account_is_annotated_with_the_role_arn_and_user_annotations() {
        let mut mc = sample();
        mc.spec
            .service_account
            .annotations
            .insert("team".into(), "obs".into());
        let sa = desired_children(&mc, ROLE).service_account;
        assert_eq!(sa.metadata.name.as_deref(), Some("mimir"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("monitoring"));
        let ann = sa.metadata.annotations.unwrap();
        assert_eq!(ann[ROLE_ARN_ANNOTATION], ROLE);
        assert_eq!(ann["team"], "obs");
    }

    #[test]
    fn compactor_claim_size_comes_from_spec_and_defaults_to_50gi() {
        let mut mc = sample();
        mc.spec.compactor.persistent_volume.as_mut().unwrap().size = Some("120Gi".into());
        mc.spec
            .compactor
            .persistent_volume
            .as_mut()
            .unwrap()
            .storage_class_name = Some("gp3".into());
        let c = desired_children(&mc, ROLE);
        let claim = &sts(&c, "compactor")
            .spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .as_ref()
            .unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("120Gi".into())
        );
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("gp3"));

        mc.spec.compactor.persistent_volume = None;
        let c = desired_children(&mc, ROLE);
        let claim = &sts(&c, "compactor")
            .spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            claim
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("50Gi".into())
        );
    }

    #[test]
    fn disabled_volume_uses_empty_dir() {
        let mut mc = sample();
        mc.spec
            .compactor
            .persistent_volume
            .as_mut()
            .unwrap()
            .enabled = false;
        let c = desired_children(&mc, ROLE);
        let spec = sts(&c, "compactor").spec.as_ref().unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let vols = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        assert!(
            vols.iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn statefulsets_run_each_target_with_replicas_sa_and_config() {
        let mut mc = sample();
        mc.spec.querier.replicas = 4;
        let c = desired_children(&mc, ROLE);
        assert_eq!(c.statefulsets.len(), 4);
        for component in crate::workloads::COMPONENTS {
            let s = sts(&c, component);
            let spec = s.spec.as_ref().unwrap();
            assert_eq!(
                spec.service_name.as_deref(),
                Some(format!("prod-{component}-headless").as_str())
            );
            let pod = spec.template.spec.as_ref().unwrap();
            assert_eq!(pod.service_account_name.as_deref(), Some("mimir"));
            let args = pod.containers[0].args.as_ref().unwrap();
            assert_eq!(args[0], format!("--target={component}"));
            assert_eq!(args[1], "--config.file=/etc/rimir/rimir.yaml");
            let sel = spec.selector.match_labels.as_ref().unwrap();
            let pod_labels = spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap();
            assert!(
                sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
                "selector matches pods"
            );
        }
        assert_eq!(sts(&c, "querier").spec.as_ref().unwrap().replicas, Some(4));
        assert_eq!(sts(&c, "ingester").spec.as_ref().unwrap().replicas, Some(3));
        assert!(
            sts(&c, "distributor")
                .spec
                .as_ref()
                .unwrap()
                .volume_claim_templates
                .is_none()
        );
    }

    #[test]
    fn pod_template_hash_follows_config_and_role_arn() {
        let mc = sample();
        let hash = |c: &Children| {
            sts(c, "ingester")
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let base = hash(&desired_children(&mc, ROLE));
        assert_eq!(base, hash(&desired_children(&mc, ROLE)));
        assert_ne!(
            base,
            hash(&desired_children(
                &mc,
                "arn:aws:iam::123456789012:role/other"
            ))
        );
        let mut changed = mc.clone();
        changed.spec.storage.retention = "30d".into();
        assert_ne!(base, hash(&desired_children(&changed, ROLE)));
    }

    #[test]
    fn children_are_owned_and_never_carry_argocd_tracking() {
        let mut mc = sample();
        mc.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/instance".into(),
            "mimir-app".into(),
        )]));
        mc.metadata.annotations = Some(BTreeMap::from([(
            "argocd.argoproj.io/tracking-id".into(),
            "mimir-app:rimir.io/MimirCluster:monitoring/prod".into(),
        )]));
        let c = desired_children(&mc, ROLE);
        let mut metas: Vec<&ObjectMeta> = vec![
            &c.service_account.metadata,
            &c.config_map.metadata,
            &c.ingester_pdb.metadata,
        ];
        metas.extend(c.services.iter().map(|s| &s.metadata));
        metas.extend(c.statefulsets.iter().map(|s| &s.metadata));
        metas.extend(
            c.statefulsets
                .iter()
                .filter_map(|s| s.spec.as_ref()?.template.metadata.as_ref()),
        );
        for m in metas {
            let text = serde_json::to_string(m).unwrap();
            assert!(!text.contains("app.kubernetes.io/instance"), "{text}");
            assert!(!text.contains("argocd.argoproj.io"), "{text}");
        }
        for m in [
            &c.service_account.metadata,
            &c.config_map.metadata,
            &c.statefulsets[0].metadata,
        ] {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "MimirCluster");
            assert_eq!(owner.name, "prod");
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn services_and_pdb_select_the_right_pods() {
        let c = desired_children(&sample(), ROLE);
        let names: Vec<&str> = c
            .services
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "prod-distributor-headless",
                "prod-distributor",
                "prod-ingester-headless",
                "prod-compactor-headless",
                "prod-querier-headless",
                "prod-querier"
            ]
        );
        let ingester = c
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("prod-ingester-headless"))
            .unwrap();
        assert_eq!(
            ingester.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        let pdb = c.ingester_pdb.spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
            "ingester"
        );
    }

    #[test]
    fn config_map_holds_rendered_yaml() {
        let mc = sample();
        let c = desired_children(&mc, ROLE);
        let yaml = &c.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(v["blocks_storage"]["s3"]["bucket_name"], "acme-metrics");
        assert_eq!(c.config_map.metadata.name.as_deref(), Some("prod-config"));
    }
}
